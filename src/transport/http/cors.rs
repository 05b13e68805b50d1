//! CORS for browser-based MCP clients, for the configured origins only.

use super::*;

/// Headers a browser-based MCP client sends and must be allowed to read.
pub(super) const CORS_ALLOW_HEADERS: &str =
    "authorization, content-type, accept, mcp-session-id, mcp-protocol-version, last-event-id";
pub(super) const CORS_EXPOSE_HEADERS: &str =
    "mcp-session-id, mcp-protocol-version, www-authenticate";
/// CORS for the origins listed in `http.cors_origins` only; the allowed
/// origin is echoed, never `*`. Preflights are answered here, before
/// authentication, because browsers send them without credentials.
pub(super) async fn cors(State(state): State<HttpState>, request: Request, next: Next) -> Response {
    let cors_origins = &state.app.config.http.cors_origins;
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .filter(|o| crate::origin_matches(cors_origins, o))
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

#[cfg(test)]
mod tests {
    use super::super::tests::{behind, fixture_with, send};
    use super::*;

    #[tokio::test]
    async fn cors_alone() {
        let f = fixture_with(
            "[http]\nallowed_origins = [\"https://app.example\"]\ncors_origins = [\"https://app.example\"]\n",
        )
        .await;
        let router = behind(&f.state, |s, r, n| Box::pin(cors(State(s), r, n)));
        let preflight = |origin: &str| {
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/mcp")
                .header(header::ORIGIN, origin)
                .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
                .body(Body::empty())
                .expect("request")
        };
        let (status, headers, _) = send(router.clone(), preflight("https://app.example")).await;
        assert_eq!(
            status,
            StatusCode::NO_CONTENT,
            "answered before authentication"
        );
        assert_eq!(
            headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            Some(&HeaderValue::from_static("https://app.example")),
            "the origin is echoed, never *"
        );
        assert!(
            headers
                .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.contains("authorization"))
        );
        let (status, headers, _) = send(router, preflight("https://evil.example")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "not a preflight we answer: passed on"
        );
        assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
}
