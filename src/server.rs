//! The MCP face of dualtrust: answers MCP requests for an [`App`], routing
//! every `tools/call` through the gate.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ElicitRequest,
    ElicitRequestParams, ElicitationSchema, Implementation, InputRequest, InputRequests,
    InputRequiredResult, ListToolsResult, MetaObject, PaginatedRequestParams, RequestStateCodec,
    SealOptions, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::gate::{Authenticated, Caller, GateOutcome, Preadmitted, Status};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a sealed `requestState` carries: a handle on a held call. The store,
/// not this blob, decides whether the lease may still be used.
#[derive(Serialize, Deserialize)]
struct HeldCall {
    lease_id: String,
    tool: String,
}

/// The key of the single input request a held call asks the client for.
const APPROVAL_INPUT: &str = "approval";

/// The held call's lease id in a client's `requestState`, if the state
/// opens and names `tool` (`call_tool` and the fuzz target).
#[doc(hidden)]
pub fn open_request_state(codec: &RequestStateCodec, state: &str, tool: &str) -> Option<String> {
    codec
        .open_json::<HeldCall>(state)
        .ok()
        .filter(|held| held.tool == tool)
        .map(|held| held.lease_id)
}

/// The `requestState` sealed for a held call (`input_required` and the
/// fuzz target).
#[doc(hidden)]
pub fn seal_request_state(
    codec: &RequestStateCodec,
    lease_id: &str,
    tool: &str,
    ttl: std::time::Duration,
) -> Option<String> {
    codec
        .seal_json_with(
            &HeldCall {
                lease_id: lease_id.to_string(),
                tool: tool.to_string(),
            },
            &SealOptions::new().ttl(ttl),
        )
        .ok()
}

/// Which front door a request came through.
#[derive(Clone)]
pub enum Transport {
    /// The token from the launching environment, re-verified on every call.
    Stdio { token: Option<String> },
    /// The principal is put into the request by the HTTP authentication layer.
    Http,
}

#[derive(Clone)]
pub struct McpServer {
    app: Arc<App>,
    transport: Transport,
}

impl McpServer {
    pub fn new(app: Arc<App>, transport: Transport) -> Self {
        Self { app, transport }
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Stdio { .. } => "stdio",
            Transport::Http => "http",
        }
    }

    fn caller(&self, context: &RequestContext<RoleServer>) -> Caller {
        match &self.transport {
            Transport::Stdio { token } => Caller::Token(token.clone()),
            Transport::Http => {
                let parts = context.extensions.get::<http::request::Parts>();
                match parts.and_then(|p| p.extensions.get::<Authenticated>()) {
                    Some(caller) => Caller::Verified(
                        caller.clone(),
                        parts.and_then(|p| p.extensions.get::<Preadmitted>().cloned()),
                    ),
                    None => Caller::Token(None),
                }
            }
        }
    }
}

/// The gate's envelope as an MCP tool result: the whole envelope as
/// structured content for programs; for clients that show only text, the
/// decision and the result as JSON with the receipt named by its hash and
/// log index. The receipt, its inclusion proof and the checkpoint travel
/// once, in the structured content.
pub fn tool_result(outcome: &GateOutcome) -> CallToolResult {
    let value =
        serde_json::to_value(outcome).unwrap_or_else(|_| serde_json::json!({ "status": "error" }));
    let mut text = serde_json::Map::new();
    for key in ["status", "result", "error", "approval"] {
        if let Some(field) = value.get(key) {
            text.insert(key.into(), field.clone());
        }
    }
    if let Some(receipt) = &outcome.receipt {
        text.insert(
            "receipt".into(),
            serde_json::json!({ "hash": receipt.hash, "seq": receipt.body.seq }),
        );
    }
    let mut content = vec![ContentBlock::text(
        serde_json::Value::Object(text).to_string(),
    )];
    if let Some(error) = &outcome.error {
        content.insert(
            0,
            ContentBlock::text(format!("{}: {}", error.code, error.message)),
        );
    }
    let mut result = if outcome.status == Status::Ok {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    };
    result.structured_content = Some(value);
    result
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("dualtrust", VERSION).with_title("dualtrust"))
            .with_instructions(
                "dualtrust gates a SQL database (db.query) and a shell (terminal.execute) behind your token's \
                 scopes, single-use leases and, for destructive calls, quorum approval by humans. Every result \
                 carries a signed receipt; audit.verify checks receipts and passports.",
            )
    }

    /// Only the tools the caller's scopes can use at all: an agent should
    /// not plan around a tool it can never call. (Listing decides nothing:
    /// every call is judged by the gate all the same.)
    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let gate = &self.app.gate;
        let caller = match self.caller(&context) {
            Caller::Verified(caller, _) => Some(caller),
            Caller::Token(token) => gate.authenticate(token.as_deref()).await.ok(),
        };
        let visible =
            |tool: &str| gate.is_off() || caller.as_ref().is_some_and(|c| gate.may_use(c, tool));
        Ok(ListToolsResult::with_all_items(
            self.app.tools.definitions_where(visible),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context);
        let transport = self.transport_name();
        let gate = &self.app.gate;
        let mut arguments = request.arguments.unwrap_or_default();
        // A retry of a held call (2026-07-28 multi-round-trip): the sealed
        // state names the lease; the gate still checks it against the store.
        let mut declined = false;
        if let Some(state) = &request.request_state {
            let Some(lease_id) = open_request_state(&self.app.request_state, state, &request.name)
            else {
                return Err(McpError::invalid_params(
                    "requestState is invalid, expired or for another tool",
                    None,
                ));
            };
            declined = request
                .input_responses
                .as_ref()
                .and_then(|r| r.get(APPROVAL_INPUT))
                .and_then(|r| r.get("action"))
                .and_then(|a| a.as_str())
                .is_some_and(|action| action != "accept");
            arguments.insert(crate::gate::LEASE_ARG.into(), lease_id.into());
        }
        let Some(outcome) = self
            .app
            .tools
            .call(gate, &request.name, transport, caller, Some(arguments))
            .await
        else {
            gate.record_unknown_tool(transport, self.caller(&context))
                .await;
            return Err(McpError::invalid_params(
                format!("unknown tool `{}`", truncate_name(&request.name)),
                None,
            ));
        };
        if outcome.status == Status::ApprovalRequired
            && !declined
            && wants_input_required(&context)
            && let Some(input_required) = self.input_required(&request.name, &outcome)
        {
            return Ok(CallToolResponse::InputRequired(input_required));
        }
        Ok(tool_result(&outcome).into())
    }
}

/// Clients on 2026-07-28 or later that can answer elicitation get a held
/// call as `InputRequiredResult`; everyone else gets an ordinary result.
fn wants_input_required(context: &RequestContext<RoleServer>) -> bool {
    let modern = context
        .protocol_version()
        .is_some_and(|v| v.as_str() >= rmcp::model::ProtocolVersion::V_2026_07_28.as_str());
    modern
        && context
            .client_capabilities()
            .is_some_and(|c| c.elicitation.is_some())
}

impl McpServer {
    /// A held call as SEP-2322 `InputRequiredResult`: the client asks its
    /// user to get the approvals, then retries with the sealed state.
    fn input_required(&self, tool: &str, outcome: &GateOutcome) -> Option<InputRequiredResult> {
        let approval = outcome.approval.as_ref()?;
        let lease_id = approval.get("lease_id")?.as_str()?.to_string();
        let expires_at = approval.get("expires_at")?.as_u64()?;
        let ttl =
            std::time::Duration::from_secs(expires_at.saturating_sub(crate::now_unix()).max(1));
        let state = seal_request_state(&self.app.request_state, &lease_id, tool, ttl)?;
        let message = format!(
            "{}\n\nLease {lease_id} needs {} approval(s) from: {}. Each approver runs:\n  dualtrust approve --lease {lease_id} --approver <your-approver-id> --key <your-key-file>\nAccept once they have approved; the call then runs exactly once.",
            outcome
                .error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or("approval required"),
            approval.get("k").and_then(|k| k.as_u64()).unwrap_or(0),
            approval
                .get("approvers")
                .and_then(|a| a.as_array())
                .map(|a| a
                    .iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default(),
        );
        let elicit = ElicitRequest::new(ElicitRequestParams::FormElicitationParams {
            meta: None,
            message,
            requested_schema: ElicitationSchema::new(std::collections::BTreeMap::new()),
        });
        let mut requests = InputRequests::new();
        requests.insert(
            APPROVAL_INPUT.to_string(),
            InputRequest::Elicitation(elicit),
        );
        // The decision's receipt travels in `_meta`, as every decision's does.
        let mut meta = MetaObject::new();
        meta.insert(
            "io.dualtrust/outcome".into(),
            serde_json::to_value(outcome).ok()?,
        );
        Some(InputRequiredResult::new(Some(requests), Some(state)).with_meta(meta))
    }
}

fn truncate_name(name: &str) -> String {
    name.chars().take(64).collect()
}
