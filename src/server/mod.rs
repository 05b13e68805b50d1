//! The MCP face of dualtrust: answers MCP requests for an [`App`], routing
//! every `tools/call` through the gate.

use std::sync::Arc;

use rmcp::model::{
    CacheScope, CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock,
    ElicitRequest, ElicitRequestParams, ElicitationSchema, GetPromptRequestParams,
    GetPromptResponse, Implementation, InputRequest, InputRequests, InputRequiredResult,
    ListPromptsResult, ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    MetaObject, PaginatedRequestParams, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, RequestStateCodec, Resource, ResourceContents, ResourceTemplate,
    SealOptions, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::gate::{Authenticated, Caller, GateOutcome, Origin, Preadmitted, Status, Tool};
use crate::tools::DbSchema;
use crate::trace::TraceId;

#[cfg(feature = "conformance")]
mod conformance;

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

/// The schema as MCP resources: the overview, and one resource per table.
const SCHEMA_URI: &str = "dualtrust://db/schema";
const TABLE_URI_PREFIX: &str = "dualtrust://db/tables/";
/// Schemas change with DDL only; listings depend on the caller's scopes
/// and the database role, so they are never shared between callers.
const SCHEMA_TTL_MS: u64 = 30_000;
const TOOLS_TTL_MS: u64 = 300_000;
/// Where a resource read's decision (receipt, proof) travels.
const OUTCOME_META: &str = "io.dualtrust/outcome";

/// Everything but RFC 3986 unreserved characters is escaped in a table URI.
const TABLE_NAME_ESCAPES: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn table_uri(name: &str) -> String {
    format!(
        "{TABLE_URI_PREFIX}{}",
        percent_encoding::utf8_percent_encode(name, TABLE_NAME_ESCAPES)
    )
}

/// The `db.schema` arguments a resource URI stands for.
fn schema_request(uri: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut arguments = serde_json::Map::new();
    if uri == SCHEMA_URI {
        return Some(arguments);
    }
    let encoded = uri.strip_prefix(TABLE_URI_PREFIX)?;
    let name = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .ok()?;
    if name.is_empty() {
        return None;
    }
    arguments.insert("table".into(), name.into_owned().into());
    Some(arguments)
}

/// "No such resource", with the requested URI in `data` as SEP-2164 asks
/// (when it is of a sane length: it is the client's own text), beside
/// whatever else `data` carries.
fn resource_not_found(message: String, uri: &str, data: Option<serde_json::Value>) -> McpError {
    const MAX_ECHOED_URI: usize = 2048;
    let mut data = match data {
        Some(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    if uri.len() <= MAX_ECHOED_URI {
        data.insert("uri".into(), uri.into());
    }
    McpError::resource_not_found(message, Some(data.into()))
}

/// A refused schema read as an MCP error that carries the decision.
fn refused(outcome: &GateOutcome, uri: Option<&str>) -> McpError {
    let message = outcome
        .error
        .as_ref()
        .map(|e| format!("{}: {}", e.code, e.message))
        .unwrap_or_else(|| "the schema read was refused".into());
    let data = serde_json::to_value(outcome).ok();
    if outcome
        .error
        .as_ref()
        .is_some_and(|e| e.code == "unknown_table" || e.code == "invalid_table")
    {
        resource_not_found(message, uri.unwrap_or_default(), data)
    } else {
        McpError::invalid_request(message, data)
    }
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
    /// The level a session's client set (`logging/setLevel`), conformance
    /// builds only: the product logs to its operator, not to clients.
    #[cfg(feature = "conformance")]
    client_logging: Arc<std::sync::atomic::AtomicBool>,
}

impl McpServer {
    pub fn new(app: Arc<App>, transport: Transport) -> Self {
        Self {
            app,
            transport,
            #[cfg(feature = "conformance")]
            client_logging: Default::default(),
        }
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Stdio { .. } => "stdio",
            Transport::Http => "http",
        }
    }

    /// The front door and the request's trace: `_meta.traceparent`
    /// (SEP-414) first, then the HTTP `traceparent` header.
    fn origin(&self, context: &RequestContext<RoleServer>) -> Origin {
        let from_meta = context
            .meta
            .0
            .get("traceparent")
            .and_then(|v| v.as_str())
            .and_then(TraceId::from_traceparent);
        let from_header = || {
            let parts = context.extensions.get::<http::request::Parts>()?;
            let mut values = parts.headers.get_all("traceparent").iter();
            // Two headers are ambiguous: neither is used.
            match (values.next(), values.next()) {
                (Some(one), None) => TraceId::from_traceparent(one.to_str().ok()?),
                _ => None,
            }
        };
        Origin {
            transport: self.transport_name(),
            trace: from_meta.or_else(from_header),
        }
    }

    /// The caller, verified, when it has one (listings filter on it).
    async fn verified_caller(&self, context: &RequestContext<RoleServer>) -> Option<Authenticated> {
        match self.caller(context) {
            Caller::Verified(caller, _) => Some(caller),
            Caller::Token(token) => self.app.gate.authenticate(token.as_deref()).await.ok(),
        }
    }

    /// Whether listings should show `tool` to this caller.
    async fn may_see(&self, context: &RequestContext<RoleServer>, tool: &str) -> bool {
        let gate = &self.app.gate;
        gate.is_off()
            || self
                .verified_caller(context)
                .await
                .is_some_and(|c| gate.may_use(&c, tool))
    }

    /// A schema read through the gate, like any tool call: scopes, rate
    /// limits and a receipt.
    async fn read_schema(
        &self,
        arguments: serde_json::Map<String, serde_json::Value>,
        uri: Option<&str>,
        context: &RequestContext<RoleServer>,
    ) -> Result<GateOutcome, McpError> {
        let outcome = self
            .app
            .tools
            .call(
                &self.app.gate,
                DbSchema::NAME,
                self.origin(context),
                self.caller(context),
                Some(arguments),
            )
            .await
            .ok_or_else(|| McpError::internal_error("db.schema is not registered", None))?;
        if outcome.status == Status::Ok {
            Ok(outcome)
        } else {
            Err(refused(&outcome, uri))
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
        #[allow(unused_mut)]
        let mut capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_prompts()
            .build();
        #[cfg(feature = "conformance")]
        {
            capabilities.completions = Some(Default::default());
            capabilities.logging = Some(Default::default());
            if let Some(resources) = capabilities.resources.as_mut() {
                resources.subscribe = Some(true);
            }
        }
        ServerConfig::new(capabilities)
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
        let caller = self.verified_caller(&context).await;
        let visible =
            |tool: &str| gate.is_off() || caller.as_ref().is_some_and(|c| gate.may_use(c, tool));
        Ok(
            ListToolsResult::with_all_items(self.app.tools.definitions_where(visible))
                .with_ttl_ms(TOOLS_TTL_MS)
                .with_cache_scope(CacheScope::Private),
        )
    }

    /// No prompts are served; the capability is declared so clients get an
    /// empty, cacheable list (2026-07-28 caching hints) instead of an error.
    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        #[cfg(not(feature = "conformance"))]
        let prompts = Vec::new();
        #[cfg(feature = "conformance")]
        let prompts = conformance::prompts();
        Ok(ListPromptsResult::with_all_items(prompts)
            .with_ttl_ms(TOOLS_TTL_MS)
            .with_cache_scope(CacheScope::Public))
    }

    /// The fixture resources never change, so a subscription is accepted
    /// and never notified (conformance builds only): `resources/subscribe`
    /// on 2025 sessions, `subscriptions/listen` on 2026-07-28 (rmcp sends
    /// the acknowledgement and keeps the stream until it is cancelled).
    #[cfg(feature = "conformance")]
    fn accepted_subscription_filter(
        &self,
        requested: &rmcp::model::SubscriptionFilter,
    ) -> Option<rmcp::model::SubscriptionFilter> {
        Some(requested.clone())
    }

    #[cfg(feature = "conformance")]
    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        conformance::subscribable(&request.uri)
    }

    #[cfg(feature = "conformance")]
    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        conformance::subscribable(&request.uri)
    }

    // Client logging is deprecated (SEP-2577); the 0.1.16 suite still
    // tests it, so only the conformance build serves it.
    #[cfg(feature = "conformance")]
    #[allow(deprecated)]
    async fn set_level(
        &self,
        _request: rmcp::model::SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        self.client_logging
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        #[cfg(feature = "conformance")]
        if let Some(answer) = self.fixture_get_prompt(&request) {
            return answer;
        }
        Err(McpError::invalid_params(
            format!(
                "no prompt named `{}`: this server serves none",
                truncate_name(&request.name)
            ),
            None,
        ))
    }

    /// The schema overview and one resource per table, read through the
    /// gate (a receipt, like a `db.schema` call); nothing for a caller whose
    /// scopes cannot read the schema.
    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let mut resources = Vec::new();
        if self.may_see(&context, DbSchema::NAME).await {
            let outcome = self
                .read_schema(serde_json::Map::new(), None, &context)
                .await?;
            let tables = outcome
                .result
                .as_ref()
                .and_then(|r| r.get("tables"))
                .and_then(|t| t.as_array())
                .cloned()
                .unwrap_or_default();
            resources.push(
                Resource::new(SCHEMA_URI, "schema")
                    .with_title("Database schema")
                    .with_description("Every table and view this server's database role may use, with its columns")
                    .with_mime_type("application/json"),
            );
            for table in &tables {
                let (Some(name), Some(kind)) = (
                    table.get("name").and_then(|n| n.as_str()),
                    table.get("kind").and_then(|k| k.as_str()),
                ) else {
                    continue;
                };
                resources.push(
                    Resource::new(table_uri(name), name)
                        .with_description(format!("{kind}: columns, keys, indexes"))
                        .with_mime_type("application/json"),
                );
            }
        }
        #[cfg(feature = "conformance")]
        resources.extend(conformance::resources());
        Ok(ListResourcesResult::with_all_items(resources)
            .with_ttl_ms(SCHEMA_TTL_MS)
            .with_cache_scope(CacheScope::Private))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let mut templates = Vec::new();
        if self.may_see(&context, DbSchema::NAME).await {
            templates.push(
                ResourceTemplate::new(format!("{TABLE_URI_PREFIX}{{table}}"), "table")
                    .with_title("One table or view")
                    .with_description("Columns, primary key, indexes, foreign keys and a view's definition; `table` as the schema names it")
                    .with_mime_type("application/json"),
            );
        }
        #[cfg(feature = "conformance")]
        templates.extend(conformance::templates());
        Ok(ListResourceTemplatesResult::with_all_items(templates)
            .with_ttl_ms(TOOLS_TTL_MS)
            .with_cache_scope(CacheScope::Private))
    }

    /// A schema resource: its JSON as text, the decision (receipt and log
    /// proof) in `_meta`.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        #[cfg(feature = "conformance")]
        if request.uri.starts_with("test://") {
            return conformance::read(&request.uri)
                .map(Into::into)
                .ok_or_else(|| {
                    resource_not_found("no such fixture resource".into(), &request.uri, None)
                });
        }
        let Some(arguments) = schema_request(&request.uri) else {
            self.app
                .gate
                .record_unknown(
                    self.transport_name(),
                    "resources/read",
                    self.caller(&context),
                    &crate::gate::Denial::UnknownResource,
                )
                .await;
            let shown: String = request.uri.chars().take(200).collect();
            return Err(resource_not_found(
                format!(
                    "no resource {shown:?}: this server serves {SCHEMA_URI} and {TABLE_URI_PREFIX}{{table}}"
                ),
                &request.uri,
                None,
            ));
        };
        let outcome = self
            .read_schema(arguments, Some(&request.uri), &context)
            .await?;
        let schema = outcome.result.clone().unwrap_or_default();
        let mut meta = MetaObject::new();
        meta.insert(
            OUTCOME_META.into(),
            serde_json::to_value(&outcome).unwrap_or_default(),
        );
        let contents = ResourceContents::TextResourceContents {
            uri: request.uri,
            mime_type: Some("application/json".into()),
            text: schema.to_string(),
            meta: None,
        };
        let mut result = ReadResourceResult::new(vec![contents]);
        result.ttl_ms = Some(SCHEMA_TTL_MS);
        result.cache_scope = Some(CacheScope::Private);
        result.meta = Some(meta);
        Ok(result.into())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        #[cfg(feature = "conformance")]
        if conformance::is_fixture_tool(&request.name) {
            return self.call_fixture(request, context).await;
        }
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
            .call(
                gate,
                &request.name,
                self.origin(&context),
                caller,
                Some(arguments),
            )
            .await
        else {
            gate.record_unknown(
                transport,
                "unknown",
                self.caller(&context),
                &crate::gate::Denial::UnknownTool,
            )
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
        meta.insert(OUTCOME_META.into(), serde_json::to_value(outcome).ok()?);
        Some(InputRequiredResult::new(Some(requests), Some(state)).with_meta(meta))
    }
}

fn truncate_name(name: &str) -> String {
    name.chars().take(64).collect()
}
