//! Host and Origin, before any token is looked at: the DNS-rebinding
//! defence (403), and exactly one host per request (400).

use super::*;

pub(super) fn host_allowed(allowed: &[String], host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']').map(|(inner, _)| inner))
        .unwrap_or_else(|| host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host));
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(bare))
}
pub(super) async fn check_host_and_origin(
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
                .is_ok_and(|o| crate::origin_matches(&http.allowed_origins, o));
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
pub(super) fn request_host(request: &Request) -> Result<String, &'static str> {
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
        assert!(crate::origin_matches(&origins, "http://localhost:3000"));
        assert!(crate::origin_matches(&origins, "https://app.example.com"));
        assert!(!crate::origin_matches(
            &origins,
            "http://localhost.evil.com:3000"
        ));
        assert!(!crate::origin_matches(&origins, "http://evil.com"));
        assert!(!crate::origin_matches(&[], "http://localhost:3000"));
    }

    #[tokio::test]
    async fn host_and_origin_alone() {
        use super::super::tests::{behind, fixture, post, send};
        let f = fixture().await;
        let router = behind(&f.state, |s, r, n| {
            Box::pin(check_host_and_origin(State(s), r, n))
        });
        let before = f.receipts().await;
        let request = |host: &str| {
            Request::builder()
                .method(Method::POST)
                .uri("/mcp")
                .header(header::HOST, host)
        };
        let cases = [
            (
                request("evil.example").body(Body::empty()),
                403,
                "Host not allowed",
            ),
            (
                request("127.0.0.1:8080")
                    .header(header::HOST, "evil.example")
                    .body(Body::empty()),
                400,
                "more than one Host header",
            ),
            (
                Request::builder()
                    .method(Method::POST)
                    .uri("http://evil.example/mcp")
                    .header(header::HOST, "127.0.0.1:8080")
                    .body(Body::empty()),
                400,
                "another host",
            ),
            (
                post("/mcp")
                    .header(header::ORIGIN, "http://evil.example")
                    .body(Body::empty()),
                403,
                "Origin not allowed",
            ),
            (
                post("/mcp")
                    .header(header::ORIGIN, "http://localhost:3000")
                    .header(header::ORIGIN, "http://localhost:3000")
                    .body(Body::empty()),
                403,
                "Origin not allowed",
            ),
        ];
        let refused = cases.len() as u64;
        for (request, want, description) in cases {
            let (status, _, body) = send(router.clone(), request.expect("request")).await;
            assert_eq!(status.as_u16(), want, "{description}");
            assert!(
                body["error_description"]
                    .as_str()
                    .unwrap_or_default()
                    .contains(description),
                "{body}"
            );
        }
        assert_eq!(
            f.receipts().await,
            before + refused,
            "each refusal is recorded"
        );
        let (status, _, _) = send(
            router,
            post("/mcp")
                .header(header::ORIGIN, "http://localhost:3000")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "a local client passes");
    }
}
