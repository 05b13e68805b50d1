//! The unauthenticated surface: protected-resource metadata (RFC 9728), the
//! server's JWKS, liveness, readiness and metrics.

use super::*;

/// RFC 9728 section 3.2 protected resource metadata.
pub(super) async fn resource_metadata(State(state): State<HttpState>) -> Response {
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
pub(super) async fn jwks(State(state): State<HttpState>) -> Response {
    let mut response = json_response(StatusCode::OK, state.app.jwks());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    response
}
pub(super) async fn healthz() -> Response {
    json_response(
        StatusCode::OK,
        json!({ "status": "ok", "version": crate::server::VERSION }),
    )
}
pub(super) async fn readyz(State(state): State<HttpState>) -> Response {
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
pub(super) async fn metrics(State(state): State<HttpState>) -> Response {
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
    let deliveries = gate.notifier().deliveries();
    {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, value) in [
            (
                "dualtrust_webhook_deliveries_total",
                "Notifications a webhook accepted.",
                &deliveries.delivered,
            ),
            (
                "dualtrust_webhook_retries_total",
                "Notification attempts that failed and were retried.",
                &deliveries.retried,
            ),
            (
                "dualtrust_webhook_failures_total",
                "Notifications given up after every attempt failed.",
                &deliveries.failed,
            ),
            (
                "dualtrust_webhook_dropped_total",
                "Notifications dropped because the delivery queue was full.",
                &deliveries.dropped,
            ),
        ] {
            extra.push((name, help, value.load(Relaxed)));
        }
    }
    let mut text = gate.metrics().render(&extra);
    let gauge = |text: &mut String, name: &str, help: &str, value: u64| {
        crate::metrics::render_gauge(text, name, help, value)
    };
    gauge(
        &mut text,
        "dualtrust_http_connections_open",
        "HTTP connections open now.",
        state.connections.open() as u64,
    );
    let log = gate.log().status();
    {
        use std::sync::atomic::Ordering::Relaxed;
        for (name, help, value) in [
            (
                "dualtrust_log_size",
                "Receipts in the audit log.",
                log.size.load(Relaxed),
            ),
            (
                "dualtrust_log_last_append_timestamp_seconds",
                "When this replica last committed receipts (unix seconds; 0: not yet).",
                log.last_append_ms.load(Relaxed) / 1000,
            ),
            (
                "dualtrust_log_cosigned_size",
                "Size of the newest checkpoint the witnesses cosigned (0: none).",
                log.cosigned_size.load(Relaxed),
            ),
            (
                "dualtrust_log_cosigned_timestamp_seconds",
                "When the witnesses last cosigned a checkpoint for this replica (unix seconds; 0: never).",
                log.cosigned_ms.load(Relaxed) / 1000,
            ),
        ] {
            gauge(&mut text, name, help, value);
        }
    }
    // One indexed query per scrape; left out (not zero) when the store is away.
    if let Ok(held) = state.app.store.pending_leases(crate::now_unix()).await {
        gauge(
            &mut text,
            "dualtrust_held_calls",
            "Calls held for approval now.",
            held.len() as u64,
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        text,
    )
        .into_response()
}
