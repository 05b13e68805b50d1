//! The MCP face of dualtrust: builds the application from a validated
//! [`Config`] and answers MCP requests, routing every `tools/call` through
//! the gate.

use std::os::unix::fs::PermissionsExt;
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

use crate::audit::AuditLog;
use crate::config::{Config, DatabaseConfig, DatabaseTarget, Mode};
use crate::gate::{Authenticated, Caller, Gate, GateOutcome, Policy, Preadmitted, Status};
use crate::identity::TokenVerifier;
use crate::keys::KeyPair;
use crate::store::Store;
use crate::tools::{AuditVerify, DbQuery, PassportIssuer, Terminal, ToolSet};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] crate::keys::KeyError),
    #[error(transparent)]
    Verifier(#[from] crate::identity::VerifierSetupError),
    #[error("state store {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: crate::store::StoreError,
    },
    #[error("database {path}: {message}")]
    Database { path: String, message: String },
    #[error("terminal roots: {0}")]
    Terminal(std::io::Error),
    #[error("internal: policy names no scope for any class of `{0}`, so it could never be called")]
    NoPolicy(&'static str),
    #[cfg(feature = "bench")]
    #[error(
        "--bench-gate-off is for benchmarks in development mode; this configuration is production"
    )]
    GateOffInProduction,
    #[cfg(feature = "bench")]
    #[error("internal: the gate was shared before it could be switched off")]
    GateShared,
}

/// Everything a running server holds.
pub struct App {
    pub config: Config,
    pub server_key: Arc<KeyPair>,
    pub store: Store,
    pub gate: Arc<Gate>,
    pub tools: Arc<ToolSet>,
    /// The terminal tool again, for the sandbox status `/readyz` reports.
    pub terminal: Arc<Terminal>,
    /// Seals `requestState` for 2026-07-28 multi-round-trip calls.
    request_state: RequestStateCodec,
}

/// What a sealed `requestState` carries: a handle on a held call. The store,
/// not this blob, decides whether the lease may still be used.
#[derive(Serialize, Deserialize)]
struct HeldCall {
    lease_id: String,
    tool: String,
}

/// The key of the single input request a held call asks the client for.
const APPROVAL_INPUT: &str = "approval";
const REQUEST_STATE_LABEL: &str = "dualtrust-request-state-v1";

/// The codec [`App`] seals `requestState` with, for a server key.
#[doc(hidden)]
pub fn request_state_codec(
    server_key: &KeyPair,
) -> Result<RequestStateCodec, crate::keys::KeyError> {
    let secret = server_key.derive_secret(REQUEST_STATE_LABEL)?;
    Ok(RequestStateCodec::new_unchecked(secret.to_vec()))
}

/// What `call_tool` does with a client's `requestState` (for the fuzz
/// target): the held call's lease id, if the state opens and names `tool`.
#[doc(hidden)]
pub fn open_request_state(codec: &RequestStateCodec, state: &str, tool: &str) -> Option<String> {
    codec
        .open_json::<HeldCall>(state)
        .ok()
        .filter(|held| held.tool == tool)
        .map(|held| held.lease_id)
}

/// What `input_required` seals for a held call (for the fuzz target).
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

/// Creates the data directory (mode 0700) if it is missing.
pub fn ensure_data_dir(config: &Config) -> Result<(), StartupError> {
    let dir = &config.data_dir;
    let err = |source| StartupError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}

/// Loads (or, in development, creates) the server signing key.
pub fn load_server_key(config: &Config) -> Result<KeyPair, StartupError> {
    let (key, created) =
        KeyPair::load_or_create(&config.server_key_path(), config.mode == Mode::Development)?;
    if created {
        tracing::warn!(path = %config.server_key_path().display(), kid = key.kid(), "DEVELOPMENT MODE: generated a new server signing key");
    }
    Ok(key)
}

/// Loads (creating if missing) the development token-issuer key.
pub fn load_dev_issuer(config: &Config) -> Result<KeyPair, StartupError> {
    let (key, created) = KeyPair::load_or_create(&config.dev_issuer_key_path(), true)?;
    if created {
        tracing::warn!(path = %config.dev_issuer_key_path().display(), "DEVELOPMENT MODE: generated a development token-issuer key");
    }
    Ok(key)
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        ensure_data_dir(&config)?;
        let server_key = Arc::new(load_server_key(&config)?);
        let dev_issuer = if config.identity.dev_tokens && config.mode == Mode::Development {
            tracing::warn!(
                "DEVELOPMENT MODE: accepting tokens minted by `dualtrust token`; never expose this server"
            );
            Some(load_dev_issuer(&config)?)
        } else {
            None
        };
        let verifier = Arc::new(TokenVerifier::new(
            &config.identity,
            dev_issuer.as_ref(),
            &config.scopes.implies,
        )?);
        verifier.prime().await;
        verifier.retry_until_loaded();
        let store =
            Store::open(&config.store_target)
                .await
                .map_err(|source| StartupError::Store {
                    path: config.store_target.describe(),
                    source,
                })?;
        let db_error = |message: String| StartupError::Database {
            path: config.database_target.describe(),
            message,
        };
        if config.database.url.expose() == DatabaseConfig::default().url.expose()
            && let DatabaseTarget::Sqlite(path) = &config.database_target
            && crate::demo::ensure_demo_database(path)
                .await
                .map_err(|e| db_error(e.to_string()))?
        {
            tracing::info!(path = %path.display(), "created the demo database");
        }
        let log = Arc::new(
            AuditLog::open(store.clone(), server_key.clone())
                .await
                .map_err(|source| StartupError::Store {
                    path: config.store_target.describe(),
                    source,
                })?,
        );
        let gate = Arc::new(Gate::new(
            verifier,
            store.clone(),
            log.clone(),
            Policy::from_config(&config),
        ));
        let terminal = Arc::new(
            Terminal::new(config.terminal.clone(), config.mode).map_err(StartupError::Terminal)?,
        );
        let mut tools = ToolSet::default();
        tools.register(Arc::new(
            DbQuery::open(&config.database_target, config.database.clone())
                .await
                .map_err(|e| db_error(e.to_string()))?,
        ));
        tools.register(terminal.clone());
        tools.register(Arc::new(PassportIssuer::new(
            server_key.clone(),
            config.passport.clone(),
        )));
        tools.register(Arc::new(AuditVerify::new(
            log,
            config.passport.issuer.clone(),
        )));
        #[cfg(feature = "bench")]
        tools.register(Arc::new(crate::tools::BenchEcho));
        if let Some(tool) = tools.names().find(|name| !gate.has_policy_for(name)) {
            return Err(StartupError::NoPolicy(tool));
        }
        let request_state = request_state_codec(&server_key)?;
        Ok(Self {
            config,
            server_key,
            store,
            gate,
            tools: Arc::new(tools),
            terminal,
            request_state,
        })
    }

    /// A benchmark's baseline: the same server with the gate switched off.
    /// Exists only in `bench` builds and refuses production configurations.
    #[cfg(feature = "bench")]
    pub async fn build_gate_off(config: Config) -> Result<Self, StartupError> {
        if config.mode == Mode::Production {
            return Err(StartupError::GateOffInProduction);
        }
        let mut app = Self::build(config).await?;
        // Nothing else holds the gate yet.
        Arc::get_mut(&mut app.gate)
            .ok_or(StartupError::GateShared)?
            .switch_off_for_benchmark();
        tracing::warn!(
            "BENCHMARK BUILD: the gate is OFF; calls run with no identity, scope, lease, quorum or receipt"
        );
        Ok(app)
    }

    /// The server's public keys as an RFC 7517 JWK Set.
    pub fn jwks(&self) -> serde_json::Value {
        crate::keys::jwks(&[&self.server_key.verifying_key()])
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

/// The gate's envelope as an MCP tool result: structured content for
/// programs, the same JSON as text for clients that only show text.
pub fn tool_result(outcome: &GateOutcome) -> CallToolResult {
    let value =
        serde_json::to_value(outcome).unwrap_or_else(|_| serde_json::json!({ "status": "error" }));
    let mut result = if outcome.status == Status::Ok {
        CallToolResult::structured(value)
    } else {
        CallToolResult::structured_error(value)
    };
    if let Some(error) = &outcome.error {
        result.content.insert(
            0,
            ContentBlock::text(format!("{}: {}", error.code, error.message)),
        );
    }
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

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(
            self.app.tools.definitions(),
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
            let held = self
                .app
                .request_state
                .open_json::<HeldCall>(state)
                .ok()
                .filter(|held| held.tool == request.name);
            let Some(held) = held else {
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
            arguments.insert(crate::gate::LEASE_ARG.into(), held.lease_id.into());
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
        let state = self
            .app
            .request_state
            .seal_json_with(
                &HeldCall {
                    lease_id: lease_id.clone(),
                    tool: tool.to_string(),
                },
                &SealOptions::new().ttl(ttl),
            )
            .ok()?;
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

#[cfg(all(test, feature = "bench"))]
mod bench_build_tests {
    use super::*;

    #[tokio::test]
    async fn gate_off_is_refused_in_production_before_anything_is_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = [
            ("DUALTRUST_MODE", "production"),
            ("DUALTRUST_IDENTITY__DEV_TOKENS", "false"),
            ("DUALTRUST_IDENTITY__JWKS_FILE", "idp-jwks.json"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let config = Config::load(dir.path(), None, env).expect("a valid production config");
        assert!(matches!(
            App::build_gate_off(config).await,
            Err(StartupError::GateOffInProduction)
        ));
        assert!(!dir.path().join("server.key").exists());
    }
}
