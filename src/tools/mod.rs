//! The tools. Each implements [`crate::gate::Tool`]; [`ToolSet`] is the
//! only place that maps a tool name to a tool, and it can only reach a tool
//! through [`Gate::run`].

pub mod audit_verify;
#[cfg(feature = "bench")]
pub mod bench_echo;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod db_query;
pub mod passport;
pub mod terminal;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use rmcp::model::{JsonObject, ToolAnnotations};
use serde_json::{Map, Value, json};

use crate::gate::{Authenticated, Caller, Challenge, Gate, GateOutcome, LEASE_ARG, Origin, Tool};

pub use audit_verify::AuditVerify;
#[cfg(feature = "bench")]
pub use bench_echo::BenchEcho;
pub use db_query::DbQuery;
pub use db_query::schema::DbSchema;
pub use passport::PassportIssuer;
pub use terminal::Terminal;

/// The tools this server offers, in the order `tools/list` shows them.
/// Adding a tool is its file, one [`ToolSet::register`] line in
/// `App::build`, and its classes' scopes in [`crate::gate::policy`].
#[derive(Default)]
pub struct ToolSet {
    tools: Vec<Box<dyn Registered>>,
}

/// A registered tool with its type erased, so one set holds them all.
trait Registered: Send + Sync {
    fn name(&self) -> &'static str;
    fn definition(&self) -> rmcp::model::Tool;
    fn call<'a>(
        &'a self,
        gate: &'a Gate,
        origin: Origin,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> BoxFuture<'a, GateOutcome>;
    fn challenge_scope<'a>(
        &'a self,
        gate: &'a Gate,
        caller: &'a Authenticated,
        arguments: Option<Map<String, Value>>,
    ) -> BoxFuture<'a, Challenge>;
}

impl<T: Tool> Registered for Arc<T> {
    fn name(&self) -> &'static str {
        T::NAME
    }

    fn definition(&self) -> rmcp::model::Tool {
        definition::<T>(&self.description())
    }

    fn call<'a>(
        &'a self,
        gate: &'a Gate,
        origin: Origin,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> BoxFuture<'a, GateOutcome> {
        Box::pin(gate.run(&**self, origin, caller, arguments))
    }

    fn challenge_scope<'a>(
        &'a self,
        gate: &'a Gate,
        caller: &'a Authenticated,
        arguments: Option<Map<String, Value>>,
    ) -> BoxFuture<'a, Challenge> {
        Box::pin(gate.challenge_scope(&**self, "http", caller, arguments))
    }
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
    pub fn register<T: Tool>(&mut self, tool: Arc<T>) {
        self.tools.push(Box::new(tool));
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.tools.iter().map(|tool| tool.name())
    }

    fn find(&self, name: &str) -> Option<&dyn Registered> {
        self.tools
            .iter()
            .find(|tool| tool.name() == name)
            .map(|tool| &**tool)
    }

    /// The definitions of the tools `visible` keeps, in registration order.
    pub fn definitions_where(&self, visible: impl Fn(&str) -> bool) -> Vec<rmcp::model::Tool> {
        self.tools
            .iter()
            .filter(|tool| visible(tool.name()))
            .map(|tool| tool.definition())
            .collect()
    }

    /// The HTTP scope challenge for a call of the named tool (see
    /// [`Gate::challenge_scope`]); an unknown tool is left to the pipeline.
    pub async fn challenge_scope(
        &self,
        gate: &Gate,
        name: &str,
        caller: &Authenticated,
        arguments: Option<Map<String, Value>>,
    ) -> Challenge {
        match self.find(name) {
            Some(tool) => tool.challenge_scope(gate, caller, arguments).await,
            None => Challenge::Undecided,
        }
    }

    /// Runs the named tool through the gate; `None` for an unknown name.
    pub async fn call(
        &self,
        gate: &Gate,
        name: &str,
        origin: Origin,
        caller: Caller,
        arguments: Option<Map<String, Value>>,
    ) -> Option<GateOutcome> {
        Some(self.find(name)?.call(gate, origin, caller, arguments).await)
    }
}
