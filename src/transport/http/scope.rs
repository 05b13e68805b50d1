//! The MCP authorization scope challenge: a `tools/call` whose token lacks
//! the scope the call needs is answered 403 naming it, after the same
//! admission the gate makes, which it then hands on.

use super::*;

#[derive(serde::Deserialize)]
pub(super) struct ToolCallProbe {
    method: String,
    params: Option<ToolCallProbeParams>,
}
#[derive(serde::Deserialize)]
pub(super) struct ToolCallProbeParams {
    name: String,
    arguments: Option<serde_json::Map<String, serde_json::Value>>,
}
/// A `tools/call` whose token lacks the scope the call needs is answered
/// 403 `insufficient_scope` naming the scope (MCP authorization, scope
/// challenge), so the client can step up its authorization. The scope is
/// judged by the tool's own classifier, as the gate judges it; anything the
/// probe cannot judge goes on to the gate, which refuses it precisely.
pub(super) async fn check_tool_scope(
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
        && let Err(rejected) = crate::transport::jsonrpc::screen(&bytes)
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
        return json_response(
            jsonrpc_error_status(&parts.headers, rejected.code),
            rejected.response(),
        );
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
/// 403 for a valid token without the scope (RFC 6750 section 3.1).
pub(super) fn insufficient_scope(state: &HttpState, scope: &str) -> Response {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{behind, fixture, post, send};
    use super::*;

    fn call(token: &str, tool: &str, arguments: serde_json::Value) -> Request {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": { "name": tool, "arguments": arguments },
        });
        post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    }

    #[tokio::test]
    async fn the_scope_challenge_alone() {
        let f = fixture().await;
        let router = behind(&f.state, |s, r, n| {
            Box::pin(check_tool_scope(State(s), r, n))
        })
        .layer(middleware::from_fn_with_state(
            f.state.clone(),
            super::super::auth::authenticate,
        ));
        let token = f.token("db:read");
        let before = f.receipts().await;

        let (status, headers, body) = send(
            router.clone(),
            call(&token, "terminal.execute", json!({ "argv": ["ls"] })),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"], "insufficient_scope");
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        assert!(
            challenge.contains(r#"scope="terminal:execute""#),
            "{challenge}"
        );
        let (status, _, body) = send(
            router.clone(),
            call(&token, "db.query", json!({ "sql": "DELETE FROM orders" })),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(f.receipts().await, before + 2, "both refusals are recorded");

        // Within scope: on to the handler, with the admission made here.
        let (status, _, body) = send(
            router.clone(),
            call(&token, "db.query", json!({ "sql": "SELECT 1" })),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["preadmitted"], true);
        // Arguments that do not parse are the pipeline's to judge.
        let (status, _, body) = send(
            router.clone(),
            call(&token, "db.query", json!({ "sql": 7 })),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["preadmitted"], false);

        let malformed = post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from("{\"jsonrpc\": \"2.0\", \"id\": 1, \"method\""))
            .expect("request");
        assert_eq!(
            send(router.clone(), malformed).await.0,
            StatusCode::BAD_REQUEST
        );
        let limit = f.state.app.config.http.max_body_bytes;
        let huge = post("/mcp")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::from(vec![b' '; limit + 1]))
            .expect("request");
        let (status, _, body) = send(router, huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["error"], "payload_too_large");
    }
}
