//! MCP over streamable HTTP, mounted at `/mcp`, with the well-known and
//! health endpoints beside it.
//!
//! Order of defences on `/mcp`: `Host` and `Origin` validation (DNS
//! rebinding; 403), then the bearer token (RFC 6750 header only; 401 with
//! `WWW-Authenticate: Bearer … resource_metadata=…` per RFC 9728 section
//! 5.1). Failed authentications are recorded in the audit log. The verified
//! [`Principal`](crate::identity::Principal) travels to the gate in the
//! request's extensions. rmcp's own Host/Origin checks stay on as a second
//! layer. Error bodies carry fixed text only.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::gate::quorum::ApprovalError;
use crate::identity::{IdentityError, Principal};
use crate::server::{App, McpServer, Transport};

#[derive(Clone)]
struct HttpState {
    app: Arc<App>,
    public_url: String,
}

impl HttpState {
    fn resource_metadata_url(&self) -> String {
        format!("{}/.well-known/oauth-protected-resource", self.public_url)
    }
}

/// Builds the router for a server reachable at `public_url`.
pub fn router(app: Arc<App>, public_url: String, shutdown: CancellationToken) -> Router {
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
    let state = HttpState { app, public_url };
    let approvals = Router::new()
        .route("/approvals", post(submit_approval))
        .route("/approvals/{lease_id}", get(show_approval))
        .with_state(state.clone());
    let protected = Router::new()
        .nest_service("/mcp", mcp)
        .merge(approvals)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .layer(middleware::from_fn_with_state(
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
        .with_state(state)
        .merge(protected)
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
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if !host.is_some_and(|h| host_allowed(&http.allowed_hosts, h)) {
        return json_response(
            StatusCode::FORBIDDEN,
            json!({ "error": "forbidden", "error_description": "Host not allowed" }),
        );
    }
    if let Some(origin) = request.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| crate::config::origin_matches(&http.allowed_origins, o));
        if !ok {
            return json_response(
                StatusCode::FORBIDDEN,
                json!({ "error": "forbidden", "error_description": "Origin not allowed" }),
            );
        }
    }
    next.run(request).await
}

/// The bearer token from the `Authorization` header (RFC 6750 section 2.1).
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, IdentityError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
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
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => {
            state.app.gate.record_transport_denial("http", error).await;
            tracing::info!(reason = error.code(), "http request not authenticated");
            unauthorized(&state, error)
        }
    }
}

fn unauthorized(state: &HttpState, error: IdentityError) -> Response {
    // RFC 6750 section 3.1: no error code when no credentials were sent.
    let challenge = if error == IdentityError::Missing {
        format!(
            r#"Bearer realm="dualtrust", resource_metadata="{}""#,
            state.resource_metadata_url()
        )
    } else {
        format!(
            r#"Bearer realm="dualtrust", resource_metadata="{}", error="invalid_token", error_description="{}""#,
            state.resource_metadata_url(),
            error
        )
    };
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

/// `GET /approvals/{lease_id}`: what an approver is asked to sign, from the
/// server's own record (never from the agent's copy).
async fn show_approval(
    State(state): State<HttpState>,
    Extension(principal): Extension<Principal>,
    axum::extract::Path(lease_id): axum::extract::Path<String>,
) -> Response {
    let scope = &state.app.config.scopes.approvals_write;
    if !principal.has_scope(scope) {
        return insufficient_scope(&state, scope);
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
    match gate.store().lease(&lease_id).await {
        Ok(Some(lease)) => {
            let rule = gate.approvers().rule_for(&lease.tool);
            let stored = gate.store().approvals(&lease.id).await.unwrap_or_default();
            let approved_by: Vec<String> = gate
                .approvers()
                .tally(&lease, &stored)
                .into_iter()
                .map(|a| a.approver)
                .collect();
            let mut view = crate::gate::quorum::approval_view(&lease, &rule, &approved_by);
            view["state"] = json!(lease.state.as_str());
            json_response(StatusCode::OK, view)
        }
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
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Response {
    let scope = &state.app.config.scopes.approvals_write;
    if !principal.has_scope(scope) {
        return insufficient_scope(&state, scope);
    }
    let Ok(submission) = serde_json::from_slice::<ApprovalSubmission>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({ "error": "invalid_request", "error_description": "expected {\"lease_id\", \"approver_id\", \"signature\"}" }),
        );
    };
    match state
        .app
        .gate
        .submit_approval(
            "http",
            Some(&principal),
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
    let sandbox = state.app.tools.terminal.sandbox_status().to_string();
    let processes = state.app.tools.terminal.process_limit_status();
    match state.app.store.ping().await {
        Ok(()) => json_response(
            StatusCode::OK,
            json!({ "status": "ready", "store": "ok", "keys": "loaded", "terminal_sandbox": sandbox, "terminal_process_limit": processes }),
        ),
        Err(_) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "status": "not_ready", "store": "unavailable", "keys": "loaded", "terminal_sandbox": sandbox, "terminal_process_limit": processes }),
        ),
    }
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
    let router = router(app, public_url.clone(), shutdown.clone());
    eprintln!("dualtrust listening on {public_url}/mcp");
    tracing::info!(address = %local, "serving MCP over streamable HTTP");
    let signal = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            wait_for_signal().await;
            signal.cancel();
        })
        .await?;
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
