//! The bearer token (RFC 6750, header only), verified and checked against
//! the revocation list; failures answered 401 with the RFC 9728 challenge,
//! recorded, and limited per client address.

use super::*;

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
pub(super) async fn authenticate(
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
            let caller = caller.from_address(client_address(&request));
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
pub(super) fn too_many_failures(retry_after: std::time::Duration) -> Response {
    let mut response = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        json!({ "error": "too_many_requests", "error_description": "too many failed authentications from this address; retry later" }),
    );
    if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}
pub(super) fn unauthorized(state: &HttpState, error: IdentityError) -> Response {
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
