//! The approvers' inbox at `/approvals/`: one page, its script and its
//! style, compiled into the binary (no CDN, nothing fetched from elsewhere).
//!
//! The page holds the approver's token and key file in memory only and
//! talks to the JSON endpoints beside it with `Authorization: Bearer`; the
//! key is used by WebCrypto in the page and never sent. Because nothing
//! authenticates by cookie, a cross-site request carries no credential
//! (there is nothing to forge); the Origin check in front of every route
//! refuses a foreign page's POST besides. The CSP allows this origin's
//! script and style only: no inline script, no `eval`, no frames.

use super::*;

const PAGE: &str = include_str!("inbox/index.html");
const SCRIPT: &str = include_str!("inbox/inbox.js");
const STYLE: &str = include_str!("inbox/inbox.css");
const ICON: &str = include_str!("inbox/favicon.svg");

/// What the inbox may load and where it may connect: this origin only.
pub(super) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub(super) async fn icon() -> Response {
    asset("image/svg+xml", ICON)
}
