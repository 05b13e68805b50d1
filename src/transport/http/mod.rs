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

mod approvals;
mod auth;
mod cors;
mod health;
mod inbox;
mod origin;
mod passkeys;
mod scope;

pub use auth::bearer;

use super::connections::ConnectionLimits;
use crate::app::App;
use crate::gate::quorum::{ApprovalError, Evidence};
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
        .route(
            "/approvals",
            post(approvals::submit_approval).get(approvals::list_approvals),
        )
        .route("/rejections", post(approvals::submit_rejection))
        .route("/approvals/history", get(approvals::approval_history))
        .route(
            "/approvals/passkeys",
            get(passkeys::list_passkeys).post(passkeys::register_passkey),
        )
        .route(
            "/approvals/passkeys/challenge",
            post(passkeys::registration_options),
        )
        .route("/approvals/{lease_id}", get(approvals::show_approval))
        .with_state(state.clone());
    let mcp = Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn(unknown_methods_are_not_found));
    let mut protected = mcp.merge(approvals);
    if !state.app.gate.is_off() {
        protected = protected
            .layer(middleware::from_fn_with_state(
                state.clone(),
                scope::check_tool_scope,
            ))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                auth::authenticate,
            ));
    }
    // The inbox's page and assets carry no data: they load without a
    // token (the page asks for one), behind the same Host/Origin checks.
    let inbox = inbox::routes(&state.app.config.inbox);
    let protected = protected.merge(inbox).layer(middleware::from_fn_with_state(
        state.clone(),
        origin::check_host_and_origin,
    ));
    Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(health::resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(health::resource_metadata),
        )
        .route("/.well-known/jwks.json", get(health::jwks))
        .route(
            "/.well-known/dualtrust-approvers.json",
            get(passkeys::approvers_document),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .with_state(state.clone())
        .merge(protected)
        .layer(middleware::from_fn_with_state(state, cors::cors))
        .layer(middleware::from_fn(contain_panics))
}

/// Whether a request speaks MCP 2026-07-28 or later, where HTTP says
/// "no such method" with 404 (SEP-2575). Earlier versions keep 400: to
/// their clients a 404 means the session is gone.
fn is_stateless_mcp(headers: &HeaderMap) -> bool {
    headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v >= rmcp::model::ProtocolVersion::V_2026_07_28.as_str())
}

/// The HTTP status of a JSON-RPC error answering a request with `headers`.
fn jsonrpc_error_status(headers: &HeaderMap, code: i64) -> StatusCode {
    if code == crate::transport::jsonrpc::METHOD_NOT_FOUND && is_stateless_mcp(headers) {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// rmcp answers a method it does not serve (`initialize`, `logging/setLevel`
/// and the others 2026-07-28 removed) with 400; that version wants 404.
async fn unknown_methods_are_not_found(request: Request, next: Next) -> Response {
    let stateless = is_stateless_mcp(request.headers());
    let response = next.run(request).await;
    if !stateless || response.status() != StatusCode::BAD_REQUEST {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // rmcp's error bodies are a few hundred bytes.
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::BAD_REQUEST, "bad request").into_response();
    };
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.pointer("/error/code").and_then(|c| c.as_i64()));
    if code == Some(crate::transport::jsonrpc::METHOD_NOT_FOUND) {
        parts.status = StatusCode::NOT_FOUND;
    }
    Response::from_parts(parts, Body::from(bytes))
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
        return auth::too_many_failures(retry_after);
    }
    state
        .app
        .gate
        .record_refusal("http", "http", None, denial)
        .await;
    tracing::info!(reason = denial.code(), client = ?address, "http request refused");
    response
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

/// Each layer alone, in front of a handler that says what reached it.
#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;

    pub(super) struct Fixture {
        _dir: tempfile::TempDir,
        pub state: HttpState,
    }

    pub(super) async fn fixture() -> Fixture {
        fixture_with("").await
    }

    /// A server on the default configuration plus `toml`.
    pub(super) async fn fixture_with(toml: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("dualtrust.toml"), toml).expect("config");
        let config =
            crate::config::Config::load(dir.path(), None, Vec::new()).expect("default config");
        let app = App::build(config).await.expect("app");
        let state = HttpState {
            app: Arc::new(app),
            public_url: "http://127.0.0.1:8080".into(),
            auth_failures: None,
            connections: ConnectionLimits::new(16, 16),
        };
        Fixture { _dir: dir, state }
    }

    impl Fixture {
        pub fn token(&self, scope: &str) -> String {
            let config = &self.state.app.config;
            let issuer = crate::app::load_dev_issuer(config).expect("issuer");
            let now = crate::now_unix();
            issuer
                .sign_jws(
                    "JWT",
                    &crate::identity::DevTokenClaims {
                        iss: &config.identity.issuer,
                        aud: &config.identity.audience,
                        sub: "alice",
                        scope,
                        iat: now,
                        nbf: now,
                        exp: now + 600,
                        jti: "t-1",
                        extra: Default::default(),
                    },
                )
                .expect("token")
        }

        /// How many receipts the log holds: refusals are recorded.
        pub async fn receipts(&self) -> u64 {
            self.state
                .app
                .store
                .log_head()
                .await
                .expect("head")
                .map_or(0, |h| h.seq + 1)
        }
    }

    /// What reached the handler: the subject, and whether an admission came along.
    async fn reached(request: Request) -> Response {
        let subject = request
            .extensions()
            .get::<Authenticated>()
            .map(|c| c.principal().subject().to_string());
        let preadmitted = request
            .extensions()
            .get::<crate::gate::Preadmitted>()
            .is_some();
        json_response(
            StatusCode::OK,
            json!({ "subject": subject, "preadmitted": preadmitted }),
        )
    }

    pub(super) async fn send(
        router: Router,
        request: HttpRequest<Body>,
    ) -> (StatusCode, HeaderMap, serde_json::Value) {
        let response = router.oneshot(request).await.expect("answered");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    pub(super) fn behind(
        state: &HttpState,
        layer: impl Fn(HttpState, Request, Next) -> futures_util::future::BoxFuture<'static, Response>
        + Clone
        + Send
        + Sync
        + 'static,
    ) -> Router {
        Router::new()
            .route("/mcp", axum::routing::any(reached))
            .layer(middleware::from_fn_with_state(
                state.clone(),
                move |State(s): State<HttpState>, request: Request, next: Next| {
                    layer(s, request, next)
                },
            ))
    }

    pub(super) fn post(uri: &str) -> axum::http::request::Builder {
        HttpRequest::builder()
            .method(Method::POST)
            .uri(uri)
            .header(header::HOST, "127.0.0.1:8080")
    }

    #[tokio::test]
    async fn authentication_alone() {
        let f = fixture().await;
        let router = behind(&f.state, |s, r, n| {
            Box::pin(auth::authenticate(State(s), r, n))
        });
        let before = f.receipts().await;

        let (status, headers, body) = send(
            router.clone(),
            post("/mcp").body(Body::empty()).expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "unauthorized");
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(challenge.contains("resource_metadata="), "{challenge}");

        let token = f.token("db:read");
        let in_query = post(&format!("/mcp?access_token={token}"))
            .body(Body::empty())
            .expect("request");
        assert_eq!(
            send(router.clone(), in_query).await.0,
            StatusCode::UNAUTHORIZED
        );

        let twice = post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(router.clone(), twice).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(f.receipts().await, before + 3, "each refusal is recorded");

        let good = post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let (status, _, body) = send(router, good).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["subject"], "alice", "the handler gets the caller");
    }
}
