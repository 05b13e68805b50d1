//! The MCP face of dualtrust: builds the application from a validated
//! [`Config`] and answers MCP requests, routing every `tools/call` through
//! the gate.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

use crate::audit::AuditLog;
use crate::config::{Config, DatabaseConfig, Mode};
use crate::gate::quorum::ApproverRegistry;
use crate::gate::{Caller, Gate, GateOutcome, GatePolicy, Status};
use crate::identity::{Principal, TokenVerifier};
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
}

/// Everything a running server holds.
pub struct App {
    pub config: Config,
    pub server_key: Arc<KeyPair>,
    pub store: Store,
    pub gate: Arc<Gate>,
    pub tools: Arc<ToolSet>,
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
        let verifier = Arc::new(TokenVerifier::new(&config.identity, dev_issuer.as_ref())?);
        let store = Store::open_sqlite(&config.store_path)
            .await
            .map_err(|source| StartupError::Store {
                path: config.store_path.display().to_string(),
                source,
            })?;
        let db_error = |message: String| StartupError::Database {
            path: config.database_path.display().to_string(),
            message,
        };
        if config.database.url == DatabaseConfig::default().url
            && crate::demo::ensure_demo_database(&config.database_path)
                .await
                .map_err(|e| db_error(e.to_string()))?
        {
            tracing::info!(path = %config.database_path.display(), "created the demo database");
        }
        let log = Arc::new(AuditLog::new(store.clone(), server_key.clone()));
        let gate = Arc::new(Gate::new(
            verifier,
            store.clone(),
            log.clone(),
            GatePolicy {
                leases: config.leases.clone(),
                approvers: ApproverRegistry::new(&config.approvers, &config.quorum),
            },
        ));
        let tools = ToolSet {
            db_query: DbQuery::open(
                &config.database_path,
                config.database.clone(),
                config.scopes.clone(),
            )
            .await
            .map_err(|e| db_error(e.to_string()))?,
            terminal: Terminal::new(config.terminal.clone(), config.scopes.clone())
                .map_err(StartupError::Terminal)?,
            passport: PassportIssuer::new(
                server_key.clone(),
                config.passport.clone(),
                config.scopes.clone(),
            ),
            audit_verify: AuditVerify::new(
                log,
                config.passport.issuer.clone(),
                config.scopes.clone(),
            ),
        };
        Ok(Self {
            config,
            server_key,
            store,
            gate,
            tools: Arc::new(tools),
        })
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
            Transport::Http => context
                .extensions
                .get::<http::request::Parts>()
                .and_then(|parts| parts.extensions.get::<Principal>())
                .cloned()
                .map(Caller::Verified)
                .unwrap_or(Caller::Token(None)),
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
        Ok(ListToolsResult::with_all_items(ToolSet::definitions()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let caller = self.caller(&context);
        let transport = self.transport_name();
        let gate = &self.app.gate;
        match self
            .app
            .tools
            .call(gate, &request.name, transport, caller, request.arguments)
            .await
        {
            Some(outcome) => Ok(tool_result(&outcome).into()),
            None => {
                gate.record_unknown_tool(transport, self.caller(&context))
                    .await;
                Err(McpError::invalid_params(
                    format!("unknown tool `{}`", truncate_name(&request.name)),
                    None,
                ))
            }
        }
    }
}

fn truncate_name(name: &str) -> String {
    name.chars().take(64).collect()
}
