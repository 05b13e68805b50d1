//! The approvers' inbox at `/approvals/`: one page, its script and its
//! style, compiled into the binary (no CDN, nothing fetched from elsewhere).
//!
//! The page holds the approver's token and key in memory only and talks to
//! the JSON endpoints beside it with `Authorization: Bearer`; the key is
//! used by WebCrypto in the page and never sent. Because nothing
//! authenticates by cookie, a cross-site request carries no credential
//! (there is nothing to forge); the Origin check in front of every route
//! refuses a foreign page's POST besides. The CSP allows this origin's
//! script and style only (no inline script, no `eval`, no frames), and
//! connections to this origin and, when OAuth sign-in is configured, to
//! the provider's token endpoint.

use super::*;
use crate::config::InboxConfig;

const PAGE: &str = include_str!("inbox/index.html");
const SCRIPT: &str = include_str!("inbox/inbox.js");
const STYLE: &str = include_str!("inbox/inbox.css");
const ICON: &str = include_str!("inbox/favicon.svg");

/// What the inbox's responses carry, fixed at start-up.
pub(super) struct Inbox {
    content_security_policy: HeaderValue,
    /// `GET /approvals/signin`: how approvers may sign in.
    signin: String,
}

impl Inbox {
    pub(super) fn new(config: &InboxConfig) -> Self {
        let token_origin = config
            .oauth
            .as_ref()
            .and_then(|o| reqwest::Url::parse(&o.token_endpoint).ok())
            .map(|u| u.origin().ascii_serialization())
            .filter(|origin| origin != "null");
        let connect = match &token_origin {
            Some(origin) => format!("'self' {origin}"),
            None => "'self'".to_string(),
        };
        let policy = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src {connect}; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        );
        let oauth = config.oauth.as_ref().map(|o| {
            json!({
                "client_id": o.client_id,
                "authorization_endpoint": o.authorization_endpoint,
                "token_endpoint": o.token_endpoint,
                "scope": o.scope,
            })
        });
        Self {
            // Built from URLs that parsed; a value a header cannot carry
            // falls back to the strictest policy rather than none.
            content_security_policy: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'")),
            signin: json!({ "oauth": oauth }).to_string(),
        }
    }

    fn respond(&self, content_type: &'static str, body: impl Into<Body>) -> Response {
        (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                (
                    header::CONTENT_SECURITY_POLICY,
                    self.content_security_policy.clone(),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
                (
                    header::REFERRER_POLICY,
                    HeaderValue::from_static("no-referrer"),
                ),
                (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
            ],
            body.into(),
        )
            .into_response()
    }
}

pub(super) fn routes(config: &InboxConfig) -> Router {
    let inbox = Arc::new(Inbox::new(config));
    let serve = |content_type: &'static str, body: &'static str| {
        let inbox = inbox.clone();
        get(move || async move { inbox.respond(content_type, body) })
    };
    let signin = {
        let inbox = inbox.clone();
        get(move || async move { inbox.respond("application/json", inbox.signin.clone()) })
    };
    Router::new()
        .route("/approvals/", serve("text/html; charset=utf-8", PAGE))
        .route(
            "/approvals/inbox.js",
            serve("text/javascript; charset=utf-8", SCRIPT),
        )
        .route(
            "/approvals/inbox.css",
            serve("text/css; charset=utf-8", STYLE),
        )
        .route("/approvals/favicon.svg", serve("image/svg+xml", ICON))
        .route("/approvals/signin", signin)
}
