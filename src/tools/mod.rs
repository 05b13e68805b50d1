//! The four tools. Each implements [`crate::gate::Tool`]; [`ToolSet`] is the
//! only place that maps a tool name to a tool, and it can only reach a tool
//! through [`Gate::run`].

pub mod audit_verify;
#[cfg(feature = "bench")]
pub mod bench_echo;
pub mod db_query;
pub mod passport;
pub mod sql_classify;
pub mod terminal;

use std::sync::Arc;

use rmcp::model::{JsonObject, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::gate::{Authenticated, Caller, Gate, GateOutcome, LEASE_ARG, Tool};

pub use audit_verify::AuditVerify;
pub use db_query::DbQuery;
pub use passport::PassportIssuer;
pub use terminal::Terminal;

pub struct ToolSet {
    pub db_query: DbQuery,
    pub terminal: Terminal,
    pub passport: PassportIssuer,
    pub audit_verify: AuditVerify,
    #[cfg(feature = "bench")]
    pub bench_echo: bench_echo::BenchEcho,
}

/// The structured content every tool returns: the gate's envelope.
fn output_schema() -> Arc<JsonObject> {
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "status": { "type": "string", "enum": ["ok", "denied", "error", "approval_required", "lease_issued"] },
            "result": { "description": "The tool's result when status is ok." },
            "error": {
                "type": "object",
                "properties": { "code": { "type": "string" }, "message": { "type": "string" } },
                "required": ["code", "message"]
            },
            "approval": { "type": "object", "description": "When status is approval_required or lease_issued: the lease id, what approvers must sign, and how to repeat the call." },
            "receipt": {
                "type": "object",
                "description": "The signed audit receipt for this decision.",
                "properties": {
                    "body": { "type": "object" },
                    "hash": { "type": "string" },
                    "sig": { "type": "string" }
                },
                "required": ["body", "hash", "sig"]
            },
            "log": {
                "type": "object",
                "description": "Where the receipt sits in the RFC 6962 log: leaf index, inclusion proof, signed checkpoint.",
                "properties": {
                    "leaf_index": { "type": "integer" },
                    "tree_size": { "type": "integer" },
                    "inclusion": { "type": "array", "items": { "type": "string" } },
                    "checkpoint": { "type": "string" }
                },
                "required": ["leaf_index", "tree_size", "inclusion", "checkpoint"]
            }
        },
        "required": ["status"]
    });
    match schema {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(Map::new()),
    }
}

/// Every tool's input schema also accepts the lease id of a held call.
fn with_lease_argument(schema: Arc<JsonObject>) -> Arc<JsonObject> {
    let mut schema = (*schema).clone();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        properties.insert(
            LEASE_ARG.to_string(),
            json!({
                "type": "string",
                "pattern": "^[0-9a-f]{32}$",
                "description": "Repeat a held call: the lease id from an approval_required or lease_issued result, with exactly the same other arguments."
            }),
        );
    }
    Arc::new(schema)
}

fn definition<T: Tool>(description: &str) -> rmcp::model::Tool {
    let annotations = ToolAnnotations::with_title(T::TITLE)
        .read_only(T::READ_ONLY)
        .destructive(!T::READ_ONLY)
        .open_world(false);
    rmcp::model::Tool::new(
        T::NAME,
        description.to_string(),
        with_lease_argument(rmcp::handler::server::common::schema_for_type::<T::Args>()),
    )
    .with_title(T::TITLE)
    .with_raw_output_schema(output_schema())
    .with_annotations(annotations)
}

impl ToolSet {
    pub fn definitions(&self) -> Vec<rmcp::model::Tool> {
        vec![
            definition::<DbQuery>(DbQuery::DESCRIPTION),
            // Says which sandbox guarantees this host lacks, if any.
            definition::<Terminal>(&self.terminal.description()),
            definition::<PassportIssuer>(PassportIssuer::DESCRIPTION),
            definition::<AuditVerify>(AuditVerify::DESCRIPTION),
            #[cfg(feature = "bench")]
            definition::<bench_echo::BenchEcho>(bench_echo::BenchEcho::DESCRIPTION),
        ]
    }

    /// The HTTP scope challenge for a call of the named tool: the scope
    /// `caller` lacks for it, with the refusal recorded; `None` when the
    /// call may go on to the gate (which also judges unknown tools and
    /// arguments that do not parse).
    pub async fn challenge_scope(
        &self,
        gate: &Gate,
        name: &str,
        caller: &Authenticated,
        arguments: Option<&Map<String, Value>>,
    ) -> Option<String> {
        let transport = "http";
        match name {
            DbQuery::NAME => {
                gate.challenge_scope(&self.db_query, transport, caller, arguments)
                    .await
            }
            Terminal::NAME => {
                gate.challenge_scope(&self.terminal, transport, caller, arguments)
                    .await
            }
            PassportIssuer::NAME => {
                gate.challenge_scope(&self.passport, transport, caller, arguments)
                    .await
            }
            AuditVerify::NAME => {
                gate.challenge_scope(&self.audit_verify, transport, caller, arguments)
                    .await
            }
            #[cfg(feature = "bench")]
            bench_echo::BenchEcho::NAME => {
                gate.challenge_scope(&self.bench_echo, transport, caller, arguments)
                    .await
            }
            _ => None,
        }
    }

    /// Runs the named tool through the gate; `None` for an unknown name.
    pub async fn call(
        &self,
        gate: &Gate,
        name: &str,
        transport: &'static str,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> Option<GateOutcome> {
        Some(match name {
            DbQuery::NAME => gate.run(&self.db_query, transport, caller, arguments).await,
            Terminal::NAME => gate.run(&self.terminal, transport, caller, arguments).await,
            PassportIssuer::NAME => gate.run(&self.passport, transport, caller, arguments).await,
            AuditVerify::NAME => {
                gate.run(&self.audit_verify, transport, caller, arguments)
                    .await
            }
            #[cfg(feature = "bench")]
            bench_echo::BenchEcho::NAME => {
                gate.run(&self.bench_echo, transport, caller, arguments)
                    .await
            }
            _ => return None,
        })
    }
}
