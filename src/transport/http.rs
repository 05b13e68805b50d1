//! MCP over streamable HTTP, mounted at `/mcp`, with the well-known and
//! health endpoints beside it.
//!
//! Order of defences on `/mcp`: `Host` and `Origin` validation (DNS
//! rebinding; 403), then the bearer token (RFC 6750 header only; 401 with
//! `WWW-Authenticate: Bearer … resource_metadata=…` per RFC 9728 section
//! 5.1). Failed authentications are recorded in the audit log. The verified
//! [`Authenticated`] caller travels to the gate in the request's
//! extensions. rmcp's own Host/Origin checks stay on as a second
//! layer. Error bodies carry fixed text only.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::connections::ConnectionLimits;
use crate::app::App;
use crate::gate::quorum::ApprovalError;
use crate::gate::rate::KeyedLimit;
use crate::gate::{Authenticated, Challenge, Denial};
use crate::identity::IdentityError;
use crate::server::{McpServer, Transport};

#[derive(Clone)]
struct HttpState {
    app: Arc<App>,
    public_url: String,
    /// Failed authentications per client address.
    auth_failures: Option<Arc<KeyedLimit<IpAddr>>>,
    /// HTTP connections open, in total and per client address.
    connections: ConnectionLimits,
}

impl HttpState {
    fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource", self.public_url)
    }
}

/// Builds the router for a server reachable at `public_url`.
pub fn router(
    app: Arc<App>,
    public_url: String,
    connections: ConnectionLimits,
    shutdown: CancellationToken,
) -> Router {
    let http = &app.config.http;
    let mut mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(http.allowed_hosts.clone())
        .with_max_request_body_bytes(http.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    mcp_config = if http.allowed_origins.is_empty() {
        mcp_config.enforce_origin_validation()
    } else {
        mcp_config.with_allowed_origins(http.allowed_origins.clone())
    };
    let factory_app = app.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(McpServer::new(factory_app.clone(), Transport::Http)),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    let auth_failures =
        KeyedLimit::per_minute(app.config.limits.auth_failures_per_minute).map(Arc::new);
    let state = HttpState {
        app,
        public_url,
        auth_failures,
        connections,
    };
    let approvals = Router::new()
        .route("/approvals", post(submit_approval))
        .route("/approvals/{lease_id}", get(show_approval))
        .with_state(state.clone());
    let mut protected = Router::new().nest_service("/mcp", mcp).merge(approvals);
    if !state.app.gate.is_off() {
        protected = protected
            .layer(middleware::from_fn_with_state(
                state.clone(),
                check_tool_scope,
            ))
            .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    }
    let protected = protected.layer(middleware::from_fn_with_state(
        state.clone(),
        check_host_and_origin,
    ));
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(protected)
        .layer(middleware::from_fn_with_state(state, cors))
        .layer(middleware::from_fn(contain_panics))
}

/// A panic anywhere in a request's handling becomes a 500 with fixed text
/// and a log line, instead of a connection dropped without an answer. (The
/// gate contains a tool's panic itself and records it; this is for the
/// layers around it.)
async fn contain_panics(request: Request, next: Next) -> Response {
    use futures_util::FutureExt;
    match std::panic::AssertUnwindSafe(next.run(request))
        .catch_unwind()
        .await
    {
        Ok(response) => response,
        Err(_) => {
            tracing::error!("an HTTP handler panicked; answered 500");
            json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "internal", "error_description": "the server failed on this request" }),
            )
        }
    }
}

/// Headers a browser-based MCP client sends and must be allowed to read.
const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id";
const CORS_EXPOSE_HEADERS: &str = "mcp-session-id, mcp-protocol-version, www-authenticate";

/// CORS for the origins listed in `http.cors_origins` only; the allowed
/// origin is echoed, never `*`. Preflights are answered here, before
/// authentication, because browsers send them without credentials.
async fn cors(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let cors_origins = &state.app.config.http.cors_origins;
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| crate::config::origin_matches(cors_origins, o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let Some(origin) = origin else {
        return next.run(request).await;
    };
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_ALLOW_HEADERS),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(CORS_EXPOSE_HEADERS),
    );
    h.append(header::VARY, HeaderValue::from_static("origin"));
    response
}

#[derive(serde::Deserialize)]
struct ToolCallProbe {
    method: String,
    params: Option<ToolCallProbeParams>,
}

#[derive(serde::Deserialize)]
struct ToolCallProbeParams {
    name: String,
    arguments: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A `tools/call` whose token lacks the scope the call needs is answered
/// 403 `insufficient_scope` naming the scope (MCP authorization, scope
/// challenge), so the client can step up its authorization. The scope is
/// judged by the tool's own classifier, as the gate judges it; anything the
/// probe cannot judge goes on to the gate, which refuses it precisely.
async fn check_tool_scope(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(caller) = request.extensions().get::<Authenticated>().cloned() else {
        return next.run(request).await;
    };
    let principal = caller.principal();
    let (mut parts, body) = request.into_parts();
    let http = &state.app.config.http;
    let body = tokio::time::timeout(
        std::time::Duration::from_millis(http.body_timeout_ms),
        axum::body::to_bytes(body, http.max_body_bytes),
    )
    .await;
    let bytes = match body {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refuse_authenticated(&state, "http", principal, Denial::PayloadTooLarge).await;
        }
        Err(_) => {
            let mut response =
                refuse_authenticated(&state, "http", principal, Denial::BodyTimeout).await;
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    if parts.uri.path() == "/mcp"
        && let Err(rejected) = super::jsonrpc::screen(&bytes)
    {
        state
            .app
            .gate
            .record_refusal(
                "http",
                "jsonrpc",
                Some(principal),
                &Denial::MalformedMessage(rejected.reason()),
            )
            .await;
        tracing::info!(
            code = rejected.code,
            reason = rejected.reason(),
            "http message refused: {}",
            rejected.message
        );
        return json_response(StatusCode::BAD_REQUEST, rejected.response());
    }
    if let Ok(ToolCallProbe {
        method,
        params: Some(params),
    }) = serde_json::from_slice::<ToolCallProbe>(&bytes)
        && method == "tools/call"
    {
        let challenge = state
            .app
            .tools
            .challenge_scope(&state.app.gate, &params.name, &caller, params.arguments)
            .await;
        match challenge {
            Challenge::Refused(scope) => {
                tracing::info!(subject = principal.subject(), tool = %params.name, scope = %scope, "tool call refused: insufficient scope");
                return insufficient_scope(&state, &scope);
            }
            // The tool has classified this call; the pipeline need not again.
            Challenge::Admitted(admitted) => {
                parts.extensions.insert(admitted);
            }
            Challenge::Undecided => {}
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// A refusal of an authenticated request, recorded, answered with the
/// denial's status, code and text.
async fn refuse_authenticated(
    state: &HttpState,
    route: &str,
    principal: &crate::identity::Principal,
    denial: Denial,
) -> Response {
    state
        .app
        .gate
        .record_refusal("http", route, Some(principal), &denial)
        .await;
    denial_response(&denial)
}

fn denial_response(denial: &Denial) -> Response {
    json_response(
        StatusCode::from_u16(denial.http_status()).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": denial.code(), "error_description": denial.message() }),
    )
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(inner, _)| inner))
        .unwrap_or_else(|| host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host));
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(bare))
}

async fn check_host_and_origin(
    State(state): State<HttpState>,
    request: Request,
    next: Next,
) -> Response {
    let http = &state.app.config.http;
    let host = match request_host(&request) {
        Ok(host) => host,
        Err(description) => {
            let response = json_response(
                StatusCode::BAD_REQUEST,
                json!({ "error": "invalid_request", "error_description": description }),
            );
            return refuse_before_authentication(
                &state,
                client_address(&request),
                &Denial::AmbiguousHost,
                response,
            )
            .await;
        }
    };
    if !host_allowed(&http.allowed_hosts, &host) {
        let response = json_response(
            StatusCode::FORBIDDEN,
            json!({ "error": "forbidden", "error_description": "Host not allowed" }),
        );
        return refuse_before_authentication(
            &state,
            client_address(&request),
            &Denial::HostNotAllowed,
            response,
        )
        .await;
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let ok = request.headers().get_all(header::ORIGIN).iter().count() == 1
            && origin
                .to_str()
                .is_ok_and(|o| crate::config::origin_matches(&http.allowed_origins, o));
        if !ok {
            let response = json_response(
                StatusCode::FORBIDDEN,
                json!({ "error": "forbidden", "error_description": "Origin not allowed" }),
            );
            return refuse_before_authentication(
                &state,
                client_address(&request),
                &Denial::OriginNotAllowed,
                response,
            )
            .await;
        }
    }
    next.run(request).await
}

/// The one host a request is for (RFC 9112 section 3.2): exactly one `Host`
/// header, and in absolute form (`POST http://h/mcp`) a target authority
/// that names the same host, so the host check here and every layer behind
/// it (rmcp's own host check reads `Host`) see one value.
fn request_host(request: &Request) -> Result<String, &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header");
    }
    let header = header
        .map(|h| h.to_str().map_err(|_| "the Host header is not text"))
        .transpose()?;
    match (header, request.uri().authority()) {
        (Some(host), Some(target)) if !host.eq_ignore_ascii_case(target.as_str()) => {
            Err("the request target names another host than the Host header")
        }
        (Some(host), _) => Ok(host.to_string()),
        // HTTP/1.1 requires Host; hyper fills it in only for HTTP/2.
        (None, _) => Err("the request has no Host header"),
    }
}

fn client_address(request: &Request) -> Option<std::net::IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// A refusal before any token was verified: recorded like every refusal,
/// until the client's address passes the failure limit; beyond it the
/// answer is 429 and nothing is recorded, so a flood cannot grow the log.
async fn refuse_before_authentication(
    state: &HttpState,
    address: Option<std::net::IpAddr>,
    denial: &Denial,
    response: Response,
) -> Response {
    if let (Some(limit), Some(ip)) = (&state.auth_failures, address)
        && let Err(retry_after) = limit.check(&ip)
    {
        state
            .app
            .gate
            .metrics()
            .auth_throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return too_many_failures(retry_after);
    }
    state
        .app
        .gate
        .record_refusal("http", "http", None, denial)
        .await;
    tracing::info!(reason = denial.code(), client = ?address, "http request refused");
    response
}

/// The bearer token from the `Authorization` header (RFC 6750 section 2.1).
#[doc(hidden)]
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, IdentityError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(IdentityError::DuplicateCredentials);
    }
    let value = value.to_str().map_err(|_| IdentityError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(IdentityError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(IdentityError::Malformed);
    }
    Ok(Some(token.trim()))
}

async fn authenticate(
    State(state): State<HttpState>,
    mut request: Request,
    next: Next,
) -> Response {
    // Tokens in the URL end up in logs and caches; the MCP authorization
    // specification forbids accepting them.
    let in_query = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.split('=').next() == Some("access_token"))
    });
    let verdict = if in_query {
        Err(IdentityError::Malformed)
    } else {
        match bearer(request.headers()) {
            Ok(token) => state.app.gate.authenticate(token).await,
            Err(e) => Err(e),
        }
    };
    match verdict {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(IdentityError::Unavailable) => {
            // The store is away: not the client's fault, and nothing can be
            // recorded. 503 tells it to come back.
            tracing::warn!("request refused: the revocation list is unavailable");
            let mut response = json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "temporarily_unavailable", "error_description": IdentityError::Unavailable.to_string() }),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
        Err(error) => {
            let response = unauthorized(&state, error);
            let address = client_address(&request);
            let response =
                refuse_before_authentication(&state, address, &Denial::Identity(error), response)
                    .await;
            if response.status() == StatusCode::TOO_MANY_REQUESTS {
                return response;
            }
            state.app.gate.metrics().record_auth_failure(error.code());
            let token = bearer(request.headers()).ok().flatten().unwrap_or_default();
            let (token_hash, claimed_subject) = if token.is_empty() {
                (String::new(), None)
            } else {
                crate::identity::token_fingerprint(token)
            };
            tracing::info!(
                reason = error.code(),
                client = ?address,
                token_sha256_prefix = %token_hash,
                claimed_subject = claimed_subject.as_deref().unwrap_or(""),
                "http request not authenticated"
            );
            response
        }
    }
}

fn too_many_failures(retry_after: std::time::Duration) -> Response {
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({ "error": "too_many_requests", "error_description": "too many failed authentications from this address; retry later" }),
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

fn unauthorized(state: &HttpState, error: IdentityError) -> Response {
    // RFC 6750 section 3.1: no error code when no credentials were sent. The
    // scope hint (MCP authorization, scope selection) lists what this server
    // understands, so a client asks its authorization server for those.
    let scope = state.app.config.scopes.all().join(" ");
    let challenge = if error == IdentityError::Missing {
        format!(
            r#"Bearer realm="dualtrust", resource_metadata="{}", scope="{scope}""#,
            state.resource_metadata_url()
        )
    } else {
        format!(
            r#"Bearer realm="dualtrust", resource_metadata="{}", scope="{scope}", error="invalid_token", error_description="{}""#,
            state.resource_metadata_url(),
            error
        )
    };
    if error == IdentityError::DuplicateCredentials {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": "invalid_request", "error_description": error.to_string() }),
        );
    }
    let mut response = json_response(
        StatusCode::UNAUTHORIZED,
        json!({ "error": if error == IdentityError::Missing { "unauthorized" } else { "invalid_token" }, "error_description": error.to_string() }),
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// 403 for a valid token without the scope (RFC 6750 section 3.1).
fn insufficient_scope(state: &HttpState, scope: &str) -> Response {
    let mut response = json_response(
        StatusCode::FORBIDDEN,
        json!({ "error": "insufficient_scope", "error_description": format!("this needs the `{scope}` scope") }),
    );
    let challenge = format!(
        r#"Bearer realm="dualtrust", resource_metadata="{}", error="insufficient_scope", scope="{scope}""#,
        state.resource_metadata_url()
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

async fn refuse_approval_scope(state: &HttpState, caller: &Authenticated) -> Response {
    let scope = &state.app.config.scopes.approvals_write;
    let denial = Denial::InsufficientScope {
        scope: scope.clone(),
        message: format!("approvals need the `{scope}` scope"),
    };
    state
        .app
        .gate
        .record_refusal(
            "http",
            crate::gate::APPROVAL,
            Some(caller.principal()),
            &denial,
        )
        .await;
    insufficient_scope(state, scope)
}

/// `GET /approvals/{lease_id}`: what an approver is asked to sign, from the
/// server's own record (never from the agent's copy).
async fn show_approval(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    axum::extract::Path(lease_id): axum::extract::Path<String>,
) -> Response {
    let scope = &state.app.config.scopes.approvals_write;
    if !caller.principal().has_scope(scope) {
        return refuse_approval_scope(&state, &caller).await;
    }
    let gate = &state.app.gate;
    let not_found = || {
        json_response(
            StatusCode::NOT_FOUND,
            json!({ "error": "lease_not_found", "error_description": ApprovalError::LeaseNotFound.to_string() }),
        )
    };
    if lease_id.len() != 32 {
        return not_found();
    }
    let view = match gate.store().lease(&lease_id).await {
        Ok(Some(lease)) => gate.approval_view(&lease).await.map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(e),
    };
    match view {
        Ok(Some(view)) => json_response(StatusCode::OK, view),
        Ok(None) => not_found(),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "store_unavailable" }),
        ),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalSubmission {
    lease_id: String,
    approver_id: String,
    /// base64url Ed25519 signature over the lease's `sign` statement.
    signature: String,
}

/// `POST /approvals`: an approver's signed approval, submitted with the
/// approver's own token (`approvals:write`, subject bound to the approver).
async fn submit_approval(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Response {
    let scope = &state.app.config.scopes.approvals_write;
    if !caller.principal().has_scope(scope) {
        return refuse_approval_scope(&state, &caller).await;
    }
    let principal = caller.principal();
    let Ok(submission) = serde_json::from_slice::<ApprovalSubmission>(&body) else {
        return refuse_authenticated(
            &state,
            crate::gate::APPROVAL,
            principal,
            Denial::InvalidRequest,
        )
        .await;
    };
    match state
        .app
        .gate
        .submit_approval(
            "http",
            Some(principal),
            &submission.lease_id,
            &submission.approver_id,
            &submission.signature,
        )
        .await
    {
        Ok(status) => json_response(
            StatusCode::OK,
            serde_json::to_value(status).unwrap_or_default(),
        ),
        Err(error) => {
            let code = match error {
                ApprovalError::LeaseNotFound => StatusCode::NOT_FOUND,
                ApprovalError::Duplicate
                | ApprovalError::LeaseNotPending
                | ApprovalError::LeaseExpired => StatusCode::CONFLICT,
                ApprovalError::MalformedSignature => StatusCode::BAD_REQUEST,
                ApprovalError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::FORBIDDEN,
            };
            json_response(
                code,
                json!({ "error": error.code(), "error_description": error.to_string() }),
            )
        }
    }
}

/// RFC 9728 section 3.2 protected resource metadata.
async fn resource_metadata(State(state): State<HttpState>) -> Response {
    let config = &state.app.config;
    json_response(
        StatusCode::OK,
        json!({
            "resource": format!("{}/mcp", state.public_url),
            "authorization_servers": config.http.authorization_servers,
            "scopes_supported": config.scopes.all(),
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": ["EdDSA"],
            "resource_name": "dualtrust",
        }),
    )
}

async fn jwks(State(state): State<HttpState>) -> Response {
    let mut response = json_response(StatusCode::OK, state.app.jwks());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}

async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        json!({ "status": "ok", "version": crate::server::VERSION }),
    )
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let sandbox = state.app.terminal.sandbox_status();
    let sandbox_missing = state.app.terminal.sandbox_missing();
    let processes = state.app.terminal.process_limit_status();
    let store_ok = state.app.store.ping().await.is_ok();
    let keys_ok = state.app.gate.verifier().keys_loaded();
    let integrity = state.app.gate.log().integrity();
    let ready = store_ok && keys_ok && integrity.is_none();
    json_response(
        if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        json!({
            "status": if ready { "ready" } else { "not_ready" },
            "store": if store_ok { "ok" } else { "unavailable" },
            "keys": if keys_ok { "loaded" } else { "unavailable" },
            "audit_log": match &integrity {
                None => json!("consistent"),
                Some(failure) => json!({ "tampered": failure }),
            },
            "terminal_sandbox": sandbox,
            "terminal_sandbox_missing": sandbox_missing,
            "terminal_process_limit": processes,
        }),
    )
}

/// Prometheus text exposition. Labels are tool names, statuses and reason
/// codes only: no subjects, no arguments.
async fn metrics(State(state): State<HttpState>) -> Response {
    let gate = &state.app.gate;
    let mut extra = Vec::new();
    if let Some(c) = gate.verifier().jwks_counters() {
        use std::sync::atomic::Ordering::Relaxed;
        extra.push((
            "dualtrust_jwks_fetches_total",
            "Successful fetches of the identity provider's JWKS.",
            c.fetched.load(Relaxed),
        ));
        extra.push((
            "dualtrust_jwks_fetch_failures_total",
            "Failed fetches of the identity provider's JWKS.",
            c.failed.load(Relaxed),
        ));
    }
    let mut text = gate.metrics().render(&extra);
    text.push_str(&format!(
        "# HELP dualtrust_http_connections_open HTTP connections open now.\n# TYPE dualtrust_http_connections_open gauge\ndualtrust_http_connections_open {}\n",
        state.connections.open()
    ));
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}

/// Binds, prints the address, and serves until SIGINT/SIGTERM; in-flight
/// requests finish before it returns.
pub async fn serve(
    app: Arc<App>,
    bind: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let local: SocketAddr = listener.local_addr()?;
    let public_url = app
        .config
        .http
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    let shutdown = CancellationToken::new();
    let grace = std::time::Duration::from_secs(app.config.http.shutdown_grace_s);
    let http = app.config.http.clone();
    let limits = ConnectionLimits::new(
        super::connections::connection_capacity(http.max_connections),
        http.max_connections_per_address,
    );
    let router = router(
        app.clone(),
        public_url.clone(),
        limits.clone(),
        shutdown.clone(),
    );
    eprintln!("dualtrust listening on {public_url}/mcp");
    tracing::info!(address = %local, "serving MCP over streamable HTTP");
    let stop_accepting = CancellationToken::new();
    let refused = app.gate.metrics().connections_refused.clone();
    let mut server = tokio::spawn({
        let stop_accepting = stop_accepting.clone();
        async move {
            super::connections::serve(listener, router, &http, limits, refused, stop_accepting)
                .await;
        }
    });
    tokio::select! {
        finished = &mut server => {
            finished?;
            return Ok(());
        }
        () = wait_for_signal() => {}
    }
    // Stop accepting; tool calls in flight get `grace` to finish and answer.
    // Only then are MCP sessions and their SSE streams closed: closing them
    // first would cancel the very calls we are waiting for.
    tracing::info!(
        grace_s = grace.as_secs(),
        "shutting down: draining in-flight calls"
    );
    stop_accepting.cancel();
    let deadline = tokio::time::Instant::now() + grace;
    while app.gate.in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let unfinished = app.gate.in_flight();
    if unfinished > 0 {
        tracing::warn!(
            unfinished,
            "calls outlived the shutdown grace period; closing them"
        );
    }
    // Answers travel from the gate to the client's stream asynchronously.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    shutdown.cancel();
    let remaining = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(std::time::Duration::from_secs(1));
    match tokio::time::timeout(remaining, &mut server).await {
        Ok(finished) => finished?,
        Err(_) => {
            tracing::warn!("connections still open after the grace period; closing them");
            server.abort();
        }
    }
    app.gate.log().flush().await;
    tracing::info!("audit log flushed; stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_origin_matching() {
        let hosts = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        assert!(host_allowed(&hosts, "127.0.0.1:8080"));
        assert!(host_allowed(&hosts, "localhost"));
        assert!(host_allowed(&hosts, "[::1]:80"));
        assert!(!host_allowed(&hosts, "evil.example:8080"));
        assert!(!host_allowed(&hosts, "127.0.0.1.evil.example"));
        let origins = vec![
            "http://localhost:*".to_string(),
            "https://app.example.com".to_string(),
        ];
        assert!(crate::config::origin_matches(
            &origins,
            "http://localhost:3000"
        ));
        assert!(crate::config::origin_matches(
            &origins,
            "https://app.example.com"
        ));
        assert!(!crate::config::origin_matches(
            &origins,
            "http://localhost.evil.com:3000"
        ));
        assert!(!crate::config::origin_matches(&origins, "http://evil.com"));
        assert!(!crate::config::origin_matches(&[], "http://localhost:3000"));
    }
}
