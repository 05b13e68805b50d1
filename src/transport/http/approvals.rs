//! `GET /approvals/{id}` and `POST /approvals`: what an approver signs, and
//! their signed approval, with the approver's own token.

use super::*;

pub(super) async fn refuse_approval_scope(state: &HttpState, caller: &Authenticated) -> Response {
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
    super::scope::insufficient_scope(state, scope)
}
/// `GET /approvals/{lease_id}`: what an approver is asked to sign, from the
/// server's own record (never from the agent's copy).
pub(super) async fn show_approval(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    axum::extract::Path(lease_id): axum::extract::Path<String>,
) -> Response {
    if let Err(refused) = may_use_approvals(&state, &caller).await {
        return refused;
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
        Err(_) => store_unavailable(),
    }
}

/// The recorded 403 for a caller without the approvals scope.
async fn may_use_approvals(state: &HttpState, caller: &Authenticated) -> Result<(), Response> {
    if caller
        .principal()
        .has_scope(&state.app.config.scopes.approvals_write)
    {
        Ok(())
    } else {
        Err(refuse_approval_scope(state, caller).await)
    }
}

/// The registered approver bound to the caller's token subject, once the
/// caller may use the approval routes at all (`None`: no approver is).
pub(super) async fn calling_approver<'s>(
    state: &'s HttpState,
    caller: &Authenticated,
) -> Result<Option<&'s str>, Response> {
    may_use_approvals(state, caller).await?;
    Ok(state
        .app
        .gate
        .approvers()
        .approver_for_subject(caller.principal().subject()))
}

pub(super) fn store_unavailable() -> Response {
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "store_unavailable" }),
    )
}
/// `GET /approvals`: the held calls the caller, as a registered approver
/// bound to its token subject, may approve or reject now, each with the
/// view approvers sign from.
pub(super) async fn list_approvals(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
) -> Response {
    let approver = match calling_approver(&state, &caller).await {
        Ok(Some(approver)) => approver,
        Ok(None) => {
            return json_response(StatusCode::OK, json!({ "approver": null, "pending": [] }));
        }
        Err(refused) => return refused,
    };
    let gate = &state.app.gate;
    let Ok(leases) = gate.store().pending_leases(crate::now_unix()).await else {
        return store_unavailable();
    };
    let mut pending = Vec::new();
    for lease in leases {
        if !gate
            .approvers()
            .eligible_for(&lease)
            .iter()
            .any(|id| id == approver)
        {
            continue;
        }
        match gate.approval_view(&lease).await {
            Ok(view) => pending.push(view),
            Err(_) => return store_unavailable(),
        }
    }
    json_response(
        StatusCode::OK,
        json!({
            "approver": approver,
            "approver_public_key": gate.approvers().public_key_of(approver),
            "pending": pending,
        }),
    )
}

/// How many decided calls `GET /approvals/history` returns.
const HISTORY_LIMIT: u32 = 20;

/// `GET /approvals/history`: the held calls the caller's approver could
/// act on that no longer wait, with their outcome and every receipt that
/// names them (the inbox verifies those against the JWKS).
pub(super) async fn approval_history(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
) -> Response {
    let approver = match calling_approver(&state, &caller).await {
        Ok(Some(approver)) => approver,
        Ok(None) => {
            return json_response(StatusCode::OK, json!({ "approver": null, "decided": [] }));
        }
        Err(refused) => return refused,
    };
    match state
        .app
        .gate
        .approval_history(approver, HISTORY_LIMIT)
        .await
    {
        Ok(decided) => json_response(
            StatusCode::OK,
            json!({ "approver": approver, "decided": decided }),
        ),
        Err(_) => store_unavailable(),
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApprovalSubmission {
    lease_id: String,
    approver_id: String,
    /// Exactly one of `signature` (base64url Ed25519 over the `sign`
    /// statement) and `passkey` (a WebAuthn assertion whose challenge is
    /// the statement's SHA-256, `passkey_challenge` in the view).
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    passkey: Option<crate::webauthn::Assertion>,
}

/// What a submission is signed with, if it names exactly one.
fn evidence(
    signature: Option<String>,
    passkey: Option<crate::webauthn::Assertion>,
) -> Option<Evidence> {
    match (signature, passkey) {
        (Some(signature), None) => Some(Evidence::Key(signature)),
        (None, Some(assertion)) => Some(Evidence::Passkey(assertion)),
        _ => None,
    }
}
/// `POST /approvals`: an approver's signed approval, submitted with the
/// approver's own token (`approvals:write`, subject bound to the approver).
pub(super) async fn submit_approval(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Response {
    let submission: ApprovalSubmission = match submission(&state, &caller, &body).await {
        Ok(submission) => submission,
        Err(refused) => return refused,
    };
    let Some(evidence) = evidence(submission.signature, submission.passkey) else {
        return refuse_invalid(&state, &caller).await;
    };
    let status = state
        .app
        .gate
        .submit_approval(
            "http",
            Some(caller.principal()),
            &submission.lease_id,
            &submission.approver_id,
            &evidence,
        )
        .await;
    answer(status)
}

/// The submission in `body`, once the caller may submit at all; otherwise
/// the refusal, recorded.
pub(super) async fn submission<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    caller: &Authenticated,
    body: &[u8],
) -> Result<T, Response> {
    may_use_approvals(state, caller).await?;
    match serde_json::from_slice::<T>(body) {
        Ok(submission) => Ok(submission),
        Err(_) => Err(refuse_invalid(state, caller).await),
    }
}

/// The recorded refusal of a submission that is not well formed.
async fn refuse_invalid(state: &HttpState, caller: &Authenticated) -> Response {
    refuse_authenticated(
        state,
        crate::gate::APPROVAL,
        caller.principal(),
        Denial::InvalidRequest,
    )
    .await
}

pub(super) fn answer<S: serde::Serialize>(status: Result<S, ApprovalError>) -> Response {
    match status {
        Ok(status) => json_response(
            StatusCode::OK,
            serde_json::to_value(status).unwrap_or_default(),
        ),
        Err(error) => approval_error(error),
    }
}

fn approval_error(error: ApprovalError) -> Response {
    let code = match error {
        ApprovalError::LeaseNotFound => StatusCode::NOT_FOUND,
        ApprovalError::Duplicate | ApprovalError::LeaseNotPending | ApprovalError::LeaseExpired => {
            StatusCode::CONFLICT
        }
        ApprovalError::MalformedSignature
        | ApprovalError::InvalidReason
        | ApprovalError::Passkey(crate::webauthn::WebauthnError::Malformed(_)) => {
            StatusCode::BAD_REQUEST
        }
        ApprovalError::NoPendingPasskey | ApprovalError::NoPasskeyToRevoke => StatusCode::NOT_FOUND,
        ApprovalError::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        ApprovalError::RateLimited | ApprovalError::TooManyPendingPasskeys => {
            StatusCode::TOO_MANY_REQUESTS
        }
        _ => StatusCode::FORBIDDEN,
    };
    json_response(
        code,
        json!({ "error": error.code(), "error_description": error.to_string() }),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RejectionSubmission {
    lease_id: String,
    approver_id: String,
    /// A signature over the lease's rejection statement with this reason
    /// (`sign_to_reject` in `GET /approvals/{id}`), as for an approval.
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    passkey: Option<crate::webauthn::Assertion>,
    reason: String,
}

/// `POST /rejections`: an approver's signed refusal of a held call, with
/// the approver's own token; the call ends at once.
pub(super) async fn submit_rejection(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Response {
    let submission: RejectionSubmission = match submission(&state, &caller, &body).await {
        Ok(submission) => submission,
        Err(refused) => return refused,
    };
    let Some(evidence) = evidence(submission.signature, submission.passkey) else {
        return refuse_invalid(&state, &caller).await;
    };
    let status = state
        .app
        .gate
        .submit_rejection(
            "http",
            Some(caller.principal()),
            &submission.lease_id,
            &submission.approver_id,
            &evidence,
            &submission.reason,
        )
        .await;
    answer(status)
}
