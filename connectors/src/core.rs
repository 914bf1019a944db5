//! The built-in `core` type: actions that touch nothing outside the engine.
//!
//! `core.noop` returns its inputs unchanged: useful for wiring and testing runbooks, and as
//! the simplest example of a [`Connector`].

use async_trait::async_trait;
use serde_json::Value;

use crate::catalog::{ActionDecl, Effect, FieldDecl, TypeDecl};
use crate::{ActionCall, Connector, ConnectorError};

pub const TYPE: TypeDecl = TypeDecl {
    name: "core",
    description: "Built-in actions that call nothing outside the engine",
    needs_instance: false,
    actions: &[ActionDecl {
        name: "noop",
        description: "Does nothing and returns its inputs as its output",
        inputs: &[FieldDecl {
            name: "*",
            ty: "any",
            required: false,
            description: "any inputs; returned unchanged",
        }],
        outputs: &[FieldDecl {
            name: "*",
            ty: "any",
            required: false,
            description: "the inputs",
        }],
        effect: Effect::Lookup,
        undo: None,
        secret_outputs: &[],
    }],
};

/// The `core` connector: no settings, no I/O.
#[derive(Debug, Clone)]
pub struct CoreConnector {
    instance: String,
}

impl CoreConnector {
    pub fn new(instance: impl Into<String>) -> Self {
        CoreConnector {
            instance: instance.into(),
        }
    }
}

#[async_trait]
impl Connector for CoreConnector {
    fn type_name(&self) -> &'static str {
        TYPE.name
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn call(&self, call: ActionCall<'_>) -> Result<Value, ConnectorError> {
        match call.action {
            "noop" => Ok(call.input.clone()),
            other => Err(ConnectorError::Other(format!(
                "connector type `core` has no action `{other}`"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::{EvidenceError, EvidenceMeta, EvidenceSink, EvidenceWriter};
    use crate::RequestLog;
    use serde_json::json;

    struct NoEvidence;

    #[async_trait]
    impl EvidenceSink for NoEvidence {
        async fn create(
            &self,
            _meta: EvidenceMeta,
        ) -> Result<Box<dyn EvidenceWriter>, EvidenceError> {
            Err(EvidenceError("not in this test".into()))
        }
    }

    fn call<'a>(
        action: &'a str,
        input: &'a Value,
        log: &'a RequestLog,
        resume: &'a crate::ResumeSlot,
    ) -> ActionCall<'a> {
        ActionCall {
            action,
            input,
            idempotency_key: "r/s/0",
            run_id: "r",
            step_id: "s",
            attempt: 1,
            evidence: &NoEvidence,
            requests: log,
            resume,
            prior: None,
        }
    }

    #[tokio::test]
    async fn noop_returns_its_input() {
        let c = CoreConnector::new("core");
        let log = RequestLog::default();
        let slot = crate::ResumeSlot::default();
        let input = json!({"a": 1, "b": ["x", {"c": null}]});
        assert_eq!(
            c.call(call("noop", &input, &log, &slot)).await.unwrap(),
            input
        );
        assert!(log.take().is_empty());
        assert!(c.call(call("explode", &input, &log, &slot)).await.is_err());
    }
}
