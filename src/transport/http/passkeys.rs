//! The passkey routes of the approvals API: an approver's own credentials,
//! a registration ceremony's options and its result, and the public
//! document of approver keys that offline verifiers read.

use super::approvals::{answer, calling_approver, store_unavailable, submission};
use super::*;

/// `GET /approvals/passkeys`: the caller's approver, its passkeys (pinned
/// and registered) and the relying party, for the inbox to ask for an
/// assertion with the right credentials.
pub(super) async fn list_passkeys(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
) -> Response {
    let approver = match calling_approver(&state, &caller).await {
        Ok(approver) => approver,
        Err(refused) => return refused,
    };
    let gate = &state.app.gate;
    let Ok(document) = gate.approvers_document().await else {
        return store_unavailable();
    };
    let passkeys = document["approvers"]
        .as_array()
        .and_then(|all| all.iter().find(|a| a["id"].as_str() == approver))
        .map_or(json!([]), |a| a["passkeys"].clone());
    json_response(
        StatusCode::OK,
        json!({
            "approver": approver,
            "relying_party": document["relying_party"],
            "passkeys": passkeys,
        }),
    )
}

/// `POST /approvals/passkeys/challenge`: the options for
/// `navigator.credentials.create()` (WebAuthn `PublicKeyCredentialCreationOptions`,
/// binary members base64url): user verification required, ES256 or
/// EdDSA, no attestation, the approver's known credentials excluded.
pub(super) async fn registration_options(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
) -> Response {
    if let Err(refused) = calling_approver(&state, &caller).await {
        return refused;
    }
    let gate = &state.app.gate;
    let challenge = match gate.registration_challenge(caller.principal()) {
        Ok(challenge) => challenge,
        Err(e) => return answer::<()>(Err(e)),
    };
    let known: Vec<serde_json::Value> = match gate.store().passkeys(Some(&challenge.approver)).await
    {
        Ok(known) => known
            .iter()
            .map(|p| json!({ "type": "public-key", "id": p.credential_id }))
            .collect(),
        Err(_) => return store_unavailable(),
    };
    let rp = gate.approvers().relying_party();
    json_response(
        StatusCode::OK,
        json!({
            "expires_at": challenge.expires_at,
            "public_key": {
                "challenge": challenge.challenge,
                "rp": { "id": rp.id, "name": "dualtrust approvals" },
                "user": {
                    "id": base64::Engine::encode(
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                        crate::sha256_hex(challenge.approver.as_bytes()).as_bytes(),
                    ),
                    "name": challenge.approver,
                    "displayName": challenge.approver,
                },
                "pubKeyCredParams": [
                    { "type": "public-key", "alg": crate::webauthn::ES256 },
                    { "type": "public-key", "alg": crate::webauthn::EDDSA },
                ],
                "authenticatorSelection": { "userVerification": "required", "residentKey": "preferred" },
                "attestation": "none",
                "excludeCredentials": known,
                "timeout": crate::gate::passkeys::CHALLENGE_TTL_S * 1000,
            },
        }),
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrationSubmission {
    /// The challenge from `POST /approvals/passkeys/challenge`.
    challenge: String,
    client_data_json: String,
    attestation_object: String,
}

/// `POST /approvals/passkeys`: a registration ceremony's result, with the
/// approver's own token; recorded pending an operator's confirmation.
pub(super) async fn register_passkey(
    State(state): State<HttpState>,
    Extension(caller): Extension<Authenticated>,
    body: axum::body::Bytes,
) -> Response {
    let submission: RegistrationSubmission = match submission(&state, &caller, &body).await {
        Ok(submission) => submission,
        Err(refused) => return refused,
    };
    let response = crate::webauthn::RegistrationResponse {
        client_data_json: submission.client_data_json,
        attestation_object: submission.attestation_object,
    };
    answer(
        state
            .app
            .gate
            .register_passkey("http", caller.principal(), &submission.challenge, &response)
            .await,
    )
}

/// `GET /.well-known/dualtrust-approvers.json`: every approver's public key
/// and passkeys, and the relying party; public, like the JWKS.
pub(super) async fn approvers_document(State(state): State<HttpState>) -> Response {
    match state.app.gate.approvers_document().await {
        Ok(document) => json_response(StatusCode::OK, document),
        Err(_) => store_unavailable(),
    }
}
