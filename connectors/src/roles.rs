//! Role actions: one step that runs the matching vendor action on every configured instance.
//!
//! A shipped runbook cannot know whether an organisation runs Okta or Entra, Jamf or Intune.
//! `identity.suspend_user` runs `okta.suspend_user`, `entra.disable_user`,
//! `google.suspend_user` and `scim.deactivate_user` on every configured instance of those
//! types (or on the instances a step's `connector:` lists), concurrently. Each instance's
//! call carries the step's idempotency key plus `/<instance>`. Results are classified per
//! instance as `succeeded`, `already`, `not_found` or `failed`; the step fails when any
//! instance failed after its retries, or when nothing was found anywhere (unless the step
//! says `allow_not_found: true`).
//!
//! On a transient failure the instances that already answered are remembered in the call's
//! [`ResumeSlot`], so the engine's next attempt calls only the ones that failed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use crate::catalog::{find_action, ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::{ActionCall, Connector, ConnectorError, ResumeSlot};

/// Which vendor actions a role action runs, by connector type.
pub struct RoleDecl {
    /// `identity.suspend_user`.
    pub name: &'static str,
    pub members: &'static [(&'static str, &'static str)],
}

/// Every role action and its vendor actions (interfaces.md, "Role actions").
pub const ROLES: &[RoleDecl] = &[
    RoleDecl {
        name: "identity.find_user",
        members: &[
            ("okta", "get_user"),
            ("entra", "get_user"),
            ("google", "get_user"),
            ("scim", "get_user"),
        ],
    },
    RoleDecl {
        name: "identity.suspend_user",
        members: &[
            ("okta", "suspend_user"),
            ("entra", "disable_user"),
            ("google", "suspend_user"),
            ("scim", "deactivate_user"),
        ],
    },
    RoleDecl {
        name: "identity.unsuspend_user",
        members: &[
            ("okta", "unsuspend_user"),
            ("entra", "enable_user"),
            ("google", "unsuspend_user"),
            ("scim", "activate_user"),
        ],
    },
    RoleDecl {
        name: "identity.revoke_sessions",
        members: &[
            ("okta", "clear_sessions"),
            ("entra", "revoke_sessions"),
            ("google", "sign_out"),
        ],
    },
    RoleDecl {
        name: "identity.snapshot_logs",
        members: &[
            ("okta", "snapshot_system_log"),
            ("entra", "snapshot_sign_ins"),
            ("entra", "snapshot_directory_audits"),
            ("google", "snapshot_login_activity"),
        ],
    },
    RoleDecl {
        name: "device.find",
        members: &[
            ("jamf", "find_computer"),
            ("intune", "find_device"),
            ("kandji", "find_device"),
            ("fleet", "find_host"),
            ("crowdstrike", "find_host"),
            ("defender", "find_machine"),
        ],
    },
    RoleDecl {
        name: "device.contain",
        members: &[
            ("crowdstrike", "contain_host"),
            ("defender", "isolate_machine"),
        ],
    },
    RoleDecl {
        name: "device.lock",
        members: &[
            ("jamf", "lock_computer"),
            ("intune", "remote_lock"),
            ("kandji", "lock_device"),
            ("fleet", "lock_host"),
        ],
    },
    RoleDecl {
        name: "device.release",
        members: &[
            ("crowdstrike", "lift_containment"),
            ("defender", "release_machine"),
            ("fleet", "unlock_host"),
        ],
    },
    RoleDecl {
        name: "device.snapshot_inventory",
        members: &[
            ("jamf", "snapshot_inventory"),
            ("intune", "snapshot_device"),
            ("fleet", "snapshot_software"),
        ],
    },
];

/// The role declaration for `identity.suspend_user`, if `uses` names a role action.
pub fn find_role(uses: &str) -> Option<&'static RoleDecl> {
    ROLES.iter().find(|r| r.name == uses)
}

/// True when `ty` is a role pseudo-type (`identity`, `device`).
pub fn is_role_type(ty: &str) -> bool {
    ty == "identity" || ty == "device"
}

/// Whether an instance of connector type `instance_type` can serve role action `uses`.
pub fn role_accepts(uses: &str, instance_type: &str) -> bool {
    find_role(uses).is_some_and(|r| r.members.iter().any(|(t, _)| *t == instance_type))
}

/// Whether an instance of `instance_type` serves any action of role type `role_type`
/// (`identity`, `device`).
pub fn role_type_accepts(role_type: &str, instance_type: &str) -> bool {
    ROLES.iter().any(|r| {
        r.name.split('.').next() == Some(role_type)
            && r.members.iter().any(|(t, _)| *t == instance_type)
    })
}

const fn f(
    name: &'static str,
    ty: &'static str,
    required: bool,
    description: &'static str,
) -> FieldDecl {
    FieldDecl {
        name,
        ty,
        required,
        description,
    }
}

const USER: FieldDecl = f("user", "string", true, "email/login, or the vendor's id");
const DEVICE: FieldDecl = f(
    "device",
    "string",
    true,
    "serial number, or the vendor's id (Defender: machine id or DNS name)",
);
const SINCE: FieldDecl = f("since", "string", true, "RFC 3339 start of the window");
const UNTIL: FieldDecl = f(
    "until",
    "string",
    false,
    "RFC 3339 end of the window (default: now)",
);
const ALLOW: FieldDecl = f(
    "allow_not_found",
    "boolean",
    false,
    "succeed even when no instance knows the target",
);
const ROLE_OUT: &[FieldDecl] = &[
    f(
        "results",
        "array",
        true,
        "per instance: {connector, type, action, status, output, error}",
    ),
    f("succeeded", "integer", true, "instances that acted"),
    f(
        "already",
        "integer",
        true,
        "instances where the target was already in that state",
    ),
    f(
        "not_found",
        "integer",
        true,
        "instances that do not know the target",
    ),
    f(
        "failed",
        "integer",
        true,
        "instances that failed after their retries",
    ),
];

const fn role(
    name: &'static str,
    description: &'static str,
    inputs: &'static [FieldDecl],
    effect: Effect,
    undo: Option<&'static str>,
) -> ActionDecl {
    ActionDecl {
        name,
        description,
        inputs,
        outputs: ROLE_OUT,
        effect,
        undo,
        secret_outputs: &[],
    }
}

/// `identity.*` role actions.
pub const IDENTITY: TypeDecl = TypeDecl {
    name: "identity",
    description:
        "Role actions over every configured identity provider (Okta, Entra ID, Google, SCIM)",
    needs_instance: false,
    actions: &[
        role(
            "find_user",
            "Look the user up in every identity provider",
            &[USER, ALLOW],
            Effect::Lookup,
            None,
        ),
        role(
            "suspend_user",
            "Suspend the user everywhere",
            &[USER, ALLOW],
            Effect::Mutation,
            Some("unsuspend_user"),
        ),
        role(
            "unsuspend_user",
            "Reactivate the user everywhere",
            &[USER, ALLOW],
            Effect::Mutation,
            Some("suspend_user"),
        ),
        role(
            "revoke_sessions",
            "End the user's sessions and tokens everywhere",
            &[USER, ALLOW],
            Effect::Mutation,
            None,
        ),
        role(
            "snapshot_logs",
            "Snapshot the user's sign-in and audit logs as evidence",
            &[USER, SINCE, UNTIL, ALLOW],
            Effect::Snapshot,
            None,
        ),
    ],
};

/// `device.*` role actions.
pub const DEVICE_ROLE: TypeDecl = TypeDecl {
    name: "device",
    description: "Role actions over every configured MDM and EDR (Jamf, Intune, Kandji, Fleet, CrowdStrike, Defender)",
    needs_instance: false,
    actions: &[
        role("find", "Find the device in every MDM and EDR", &[DEVICE, ALLOW], Effect::Lookup, None),
        role("contain", "Isolate the device from the network (reversible)", &[DEVICE, ALLOW], Effect::Mutation, Some("release")),
        role("lock", "MDM-lock the device", &[DEVICE, ALLOW], Effect::Mutation, None),
        role("release", "Lift network containment", &[DEVICE, ALLOW], Effect::Mutation, Some("contain")),
        role("snapshot_inventory", "Snapshot the device's inventory as evidence", &[DEVICE, f("since", "string", false, "RFC 3339"), UNTIL, ALLOW], Effect::Snapshot, None),
    ],
};

/// One instance a role call runs on.
#[derive(Clone)]
pub struct Member {
    pub connector: Arc<dyn Connector>,
    pub action: &'static ActionDecl,
}

/// A role action bound to the instances that serve it.
pub struct RoleConnector {
    uses: &'static str,
    members: Vec<Member>,
    /// Names of the types that could serve, for the "nothing configured" message.
    candidates: Vec<&'static str>,
}

impl RoleConnector {
    /// Bind `uses` (`identity.suspend_user`) to `instances` (every instance of a member type
    /// when `only` is None, else just the named ones).
    pub fn new(uses: &str, instances: Vec<Arc<dyn Connector>>) -> Option<RoleConnector> {
        let role = find_role(uses)?;
        let mut members = Vec::new();
        for c in instances {
            for (ty, action) in role.members {
                if c.type_name() == *ty {
                    if let Some((_, decl)) = find_action(&format!("{ty}.{action}")) {
                        members.push(Member {
                            connector: c.clone(),
                            action: decl,
                        });
                    }
                }
            }
        }
        Some(RoleConnector {
            uses: role.name,
            members,
            candidates: role.members.iter().map(|(t, _)| *t).collect(),
        })
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    fn key(&self, m: &Member) -> String {
        let several = self
            .members
            .iter()
            .filter(|x| x.connector.instance() == m.connector.instance())
            .count()
            > 1;
        if several {
            format!("{}/{}", m.connector.instance(), m.action.name)
        } else {
            m.connector.instance().to_string()
        }
    }
}

/// What earlier attempts of a role call achieved.
#[derive(Default)]
struct Progress {
    /// Finished instances: key → result object.
    done: BTreeMap<String, Value>,
    /// Per-instance resume slots (a paged snapshot resumes inside its own slot).
    slots: BTreeMap<String, Arc<ResumeSlot>>,
}

fn classify(out: &Value) -> &'static str {
    if out.get("found") == Some(&Value::Bool(false)) {
        "not_found"
    } else if out.get("already") == Some(&Value::Bool(true)) {
        "already"
    } else {
        "succeeded"
    }
}

fn member_input(input: &Value) -> Value {
    match input {
        Value::Object(m) => {
            let mut m: Map<String, Value> = m.clone();
            m.remove("allow_not_found");
            Value::Object(m)
        }
        other => other.clone(),
    }
}

#[async_trait]
impl Connector for RoleConnector {
    fn type_name(&self) -> &'static str {
        self.uses.split('.').next().unwrap_or("role")
    }

    fn instance(&self) -> &str {
        self.uses
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        if self.members.is_empty() {
            return Err(ConnectorError::Config(format!(
                "`{}` has no configured instance to run on (it runs on types: {})",
                self.uses,
                self.candidates.join(", ")
            )));
        }
        let mut progress: Progress = call.resume.take().unwrap_or_default();
        let input = member_input(call.input);
        let pending: Vec<(String, Member)> = self
            .members
            .iter()
            .map(|m| (self.key(m), m.clone()))
            .filter(|(k, _)| !progress.done.contains_key(k))
            .collect();
        for (k, _) in &pending {
            progress.slots.entry(k.clone()).or_default();
        }
        let calls = pending.iter().map(|(k, m)| {
            let slot = progress.slots.get(k).cloned().unwrap_or_default();
            let input = &input;
            async move {
                let key = format!("{}/{k}", call.idempotency_key);
                let sub = ActionCall {
                    action: m.action.name,
                    input,
                    idempotency_key: &key,
                    run_id: call.run_id,
                    step_id: call.step_id,
                    attempt: call.attempt,
                    evidence: call.evidence,
                    requests: call.requests,
                    resume: &slot,
                    prior: call.prior.and_then(|p| p.get(k.as_str())),
                };
                (k.clone(), m.clone(), m.connector.call(sub).await)
            }
        });
        let answers = join_all(calls).await;
        let mut transient: Option<Option<Duration>> = None;
        let mut failures = Vec::new();
        for (k, m, r) in answers {
            let base = json!({
                "connector": m.connector.instance(),
                "type": m.connector.type_name(),
                "action": m.action.name,
            });
            match r {
                Ok(out) => {
                    let mut res = base;
                    res["status"] = json!(classify(&out));
                    res["output"] = out;
                    res["error"] = Value::Null;
                    progress.done.insert(k.clone(), res);
                    progress.slots.remove(&k);
                }
                Err(e) if e.is_transient() => {
                    let ra = e.retry_after();
                    transient = Some(match transient.flatten() {
                        Some(prev) => Some(ra.map_or(prev, |r| r.max(prev))),
                        None => ra,
                    });
                    failures.push(format!("{}: {e}", m.connector.instance()));
                }
                Err(e) => {
                    let mut res = base;
                    res["status"] = json!("failed");
                    res["output"] = Value::Null;
                    res["error"] = json!(e.to_string());
                    failures.push(format!("{}: {e}", m.connector.instance()));
                    progress.done.insert(k, res);
                }
            }
        }
        if let Some(retry_after) = transient {
            let message = failures.join("; ");
            call.resume.put(progress);
            return Err(ConnectorError::Transient {
                retry_after,
                message,
            });
        }
        let results: Vec<Value> = self
            .members
            .iter()
            .filter_map(|m| progress.done.get(&self.key(m)).cloned())
            .collect();
        let count = |s: &str| results.iter().filter(|r| r["status"] == s).count();
        let (succeeded, already, not_found, failed) = (
            count("succeeded"),
            count("already"),
            count("not_found"),
            count("failed"),
        );
        let output = json!({
            "results": results, "succeeded": succeeded, "already": already,
            "not_found": not_found, "failed": failed,
        });
        if failed > 0 {
            return Err(ConnectorError::Other(format!(
                "`{}` failed on {failed} of {} instance(s): {}",
                self.uses,
                results.len(),
                failures.join("; ")
            )));
        }
        let allow = call.input.get("allow_not_found") == Some(&Value::Bool(true));
        if succeeded + already == 0 && !allow {
            let what = call
                .input
                .get("user")
                .or_else(|| call.input.get("device"))
                .and_then(Value::as_str)
                .unwrap_or("the target");
            let names: Vec<&str> = self
                .members
                .iter()
                .map(|m| m.connector.instance())
                .collect();
            return Err(ConnectorError::Rejected {
                status: 404,
                message: format!(
                    "`{what}` was not found in any configured instance ({}); set `allow_not_found: true` to accept that",
                    names.join(", ")
                ),
            });
        }
        Ok(output)
    }

    async fn prior_state(&self, call: ActionCall<'_>) -> Result<Option<Value>, ConnectorError> {
        let input = member_input(call.input);
        let mut out = Map::new();
        for m in &self.members {
            let k = self.key(m);
            let key = format!("{}/{k}", call.idempotency_key);
            let slot = ResumeSlot::default();
            let sub = ActionCall {
                action: m.action.name,
                input: &input,
                idempotency_key: &key,
                run_id: call.run_id,
                step_id: call.step_id,
                attempt: call.attempt,
                evidence: call.evidence,
                requests: call.requests,
                resume: &slot,
                prior: call.prior.and_then(|p| p.get(k.as_str())),
            };
            match m.connector.prior_state(sub).await {
                Ok(Some(v)) => {
                    out.insert(k, v);
                }
                Ok(None) => {}
                Err(e) => {
                    out.insert(k, json!({"unreadable": e.to_string()}));
                }
            }
        }
        Ok((!out.is_empty()).then_some(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{EvidenceError, EvidenceMeta, EvidenceSink, EvidenceWriter};
    use crate::RequestLog;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    struct NoEvidence;
    #[async_trait]
    impl EvidenceSink for NoEvidence {
        async fn create(&self, _m: EvidenceMeta) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
            Err(EvidenceError("none".into()))
        }
    }

    /// A connector that answers from a script and records the keys it was called with.
    struct Fake {
        ty: &'static str,
        name: String,
        script: Mutex<VecDeque<Result<Value, ConnectorError>>>,
        keys: Mutex<Vec<String>>,
    }

    fn fake(ty: &'static str, name: &str, script: Vec<Result<Value, ConnectorError>>) -> Arc<Fake> {
        Arc::new(Fake {
            ty,
            name: name.into(),
            script: Mutex::new(script.into()),
            keys: Mutex::new(Vec::new()),
        })
    }

    #[async_trait]
    impl Connector for Fake {
        fn type_name(&self) -> &'static str {
            self.ty
        }
        fn instance(&self) -> &str {
            &self.name
        }
        async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
            self.keys
                .lock()
                .unwrap()
                .push(call.idempotency_key.to_string());
            self.script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| Err(ConnectorError::Other("script exhausted".into())))
        }
    }

    async fn call(
        rc: &RoleConnector,
        input: Value,
        slot: &ResumeSlot,
    ) -> Result<Value, ConnectorError> {
        let log = RequestLog::default();
        rc.call(ActionCall {
            action: "suspend_user",
            input: &input,
            idempotency_key: "R/suspend/0",
            run_id: "R",
            step_id: "suspend",
            attempt: 1,
            evidence: &NoEvidence,
            requests: &log,
            resume: slot,
            prior: None,
        })
        .await
    }

    fn as_dyn(v: &[Arc<Fake>]) -> Vec<Arc<dyn Connector>> {
        v.iter().map(|f| f.clone() as Arc<dyn Connector>).collect()
    }

    #[tokio::test]
    async fn each_instance_is_classified_and_keyed() {
        let okta = fake(
            "okta",
            "okta-prod",
            vec![Ok(
                json!({"found": true, "target": "00u1", "already": false}),
            )],
        );
        let entra = fake(
            "entra",
            "graph",
            vec![Ok(json!({"found": true, "target": "g1", "already": true}))],
        );
        let scim = fake(
            "scim",
            "hr-scim",
            vec![Ok(
                json!({"found": false, "target": null, "already": false}),
            )],
        );
        let jamf = fake("jamf", "jamf", vec![]);
        let rc = RoleConnector::new(
            "identity.suspend_user",
            as_dyn(&[okta.clone(), entra, scim, jamf.clone()]),
        )
        .unwrap();
        assert_eq!(rc.members().len(), 3, "jamf does not serve identity roles");
        let out = call(&rc, json!({"user": "x@acme.com"}), &ResumeSlot::default())
            .await
            .unwrap();
        assert_eq!(
            (
                out["succeeded"].as_u64(),
                out["already"].as_u64(),
                out["not_found"].as_u64(),
                out["failed"].as_u64()
            ),
            (Some(1), Some(1), Some(1), Some(0))
        );
        assert_eq!(
            okta.keys.lock().unwrap().as_slice(),
            ["R/suspend/0/okta-prod"]
        );
        assert!(jamf.keys.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn not_found_anywhere_fails_unless_allowed() {
        let a = fake(
            "okta",
            "a",
            vec![Ok(json!({"found": false})), Ok(json!({"found": false}))],
        );
        let rc = RoleConnector::new("identity.suspend_user", as_dyn(&[a])).unwrap();
        let e = call(
            &rc,
            json!({"user": "ghost@acme.com"}),
            &ResumeSlot::default(),
        )
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("ghost@acme.com") && !e.is_transient(),
            "{e}"
        );
        let ok = call(
            &rc,
            json!({"user": "ghost@acme.com", "allow_not_found": true}),
            &ResumeSlot::default(),
        )
        .await
        .unwrap();
        assert_eq!(ok["not_found"], 1);
    }

    #[tokio::test]
    async fn a_transient_failure_retries_only_that_instance() {
        let a = fake(
            "okta",
            "a",
            vec![Ok(json!({"found": true, "already": false}))],
        );
        let b = fake(
            "entra",
            "b",
            vec![
                Err(ConnectorError::RateLimited {
                    retry_after: Some(Duration::from_secs(3)),
                    message: "429".into(),
                }),
                Ok(json!({"found": true, "already": false})),
            ],
        );
        let rc =
            RoleConnector::new("identity.suspend_user", as_dyn(&[a.clone(), b.clone()])).unwrap();
        let slot = ResumeSlot::default();
        let e = call(&rc, json!({"user": "x@acme.com"}), &slot)
            .await
            .unwrap_err();
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
        let out = call(&rc, json!({"user": "x@acme.com"}), &slot)
            .await
            .unwrap();
        assert_eq!(out["succeeded"], 2);
        assert_eq!(
            a.keys.lock().unwrap().len(),
            1,
            "the instance that succeeded is not called again"
        );
        assert_eq!(b.keys.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_hard_failure_fails_the_step_and_no_instances_is_a_configuration_error() {
        let a = fake(
            "okta",
            "a",
            vec![Err(ConnectorError::Auth {
                status: 403,
                message: "E0000006".into(),
            })],
        );
        let rc = RoleConnector::new("identity.suspend_user", as_dyn(&[a])).unwrap();
        let e = call(&rc, json!({"user": "x@acme.com"}), &ResumeSlot::default())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("failed on 1 of 1"), "{e}");
        let none = RoleConnector::new("identity.suspend_user", vec![]).unwrap();
        let e = call(&none, json!({"user": "x@acme.com"}), &ResumeSlot::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectorError::Config(_)), "{e}");
    }
}
