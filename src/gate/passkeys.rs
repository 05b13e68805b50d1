//! Approvers' passkeys: registering one from the inbox (WebAuthn
//! registration ceremony, with the approver's own token), an operator
//! confirming it, and the published document of every approver key and
//! credential that lets anyone re-check approvals offline.
//!
//! A registration is a receipt, and so is its confirmation: the log itself
//! shows which credentials could approve from when.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Serialize;

use crate::audit::{Decision, Receipt};
use crate::identity::Principal;
use crate::store::{StoreError, StoredPasskey};
use crate::webauthn::{RegistrationResponse, verify_registration};

use super::quorum::ApprovalError;
use super::record::CallRecord;
use super::{Gate, PASSKEY};

/// Derives the key registration challenges are authenticated with, from
/// the server key, so that any replica can check a challenge another
/// issued without shared state.
const CHALLENGE_LABEL: &str = "dualtrust-passkey-registration-v1";
/// How long a registration challenge may be answered.
pub const CHALLENGE_TTL_S: u64 = 300;
/// Registrations one approver may have waiting for an operator: beyond
/// it, a token holder could grow the table every tally and the public
/// approvers document read.
pub const MAX_PENDING_PER_APPROVER: usize = 5;

/// A registration challenge for one approver: its expiry, a nonce, and a
/// MAC over both and the approver id, all inside the challenge bytes.
#[derive(Debug, Clone, Serialize)]
pub struct RegistrationChallenge {
    pub approver: String,
    /// base64url: what `navigator.credentials.create()` signs.
    pub challenge: String,
    pub expires_at: u64,
}

/// A passkey registered, waiting for an operator.
#[derive(Debug, Clone, Serialize)]
pub struct PasskeyRegistered {
    pub approver: String,
    pub credential_id: String,
    pub alg: i64,
    pub confirmed: bool,
    pub receipt: Receipt,
}

impl Gate {
    fn challenge_tag(
        &self,
        approver: &str,
        expires_at: u64,
        nonce: &[u8],
    ) -> Result<[u8; 32], ApprovalError> {
        let key = self
            .log
            .keys()
            .signing()
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        let secret = key
            .derive_secret(CHALLENGE_LABEL)
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_slice())
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        mac.update(&(approver.len() as u64).to_be_bytes());
        mac.update(approver.as_bytes());
        mac.update(&expires_at.to_be_bytes());
        mac.update(nonce);
        Ok(mac.finalize().into_bytes().into())
    }

    /// A fresh registration challenge for the approver bound to
    /// `submitter`'s token subject.
    pub fn registration_challenge(
        &self,
        submitter: &Principal,
    ) -> Result<RegistrationChallenge, ApprovalError> {
        let approver = self
            .policy
            .approvers
            .approver_for_subject(submitter.subject())
            .ok_or(ApprovalError::WrongSubmitter)?;
        let expires_at = self.clock.now_unix() + CHALLENGE_TTL_S;
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|_| ApprovalError::StoreUnavailable)?;
        let mut bytes = expires_at.to_be_bytes().to_vec();
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&self.challenge_tag(approver, expires_at, &nonce)?);
        Ok(RegistrationChallenge {
            approver: approver.to_string(),
            challenge: URL_SAFE_NO_PAD.encode(bytes),
            expires_at,
        })
    }

    /// The challenge bytes, if this server issued them to `approver` and
    /// they have not expired.
    fn check_challenge(&self, approver: &str, challenge: &str) -> Result<Vec<u8>, ApprovalError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| ApprovalError::BadChallenge)?;
        if bytes.len() != 8 + 16 + 32 {
            return Err(ApprovalError::BadChallenge);
        }
        let (expiry, rest) = bytes.split_at(8);
        let (nonce, tag) = rest.split_at(16);
        let mut expiry_bytes = [0u8; 8];
        expiry_bytes.copy_from_slice(expiry);
        let expires_at = u64::from_be_bytes(expiry_bytes);
        let expected = self.challenge_tag(approver, expires_at, nonce)?;
        // Compared without an early exit, so timing says nothing of the tag.
        let differs = expected
            .iter()
            .zip(tag)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differs != 0 || expires_at <= self.clock.now_unix() {
            return Err(ApprovalError::BadChallenge);
        }
        Ok(bytes)
    }

    /// Verifies and records a passkey registration made by the approver
    /// bound to `submitter`; it counts for approvals once an operator
    /// confirms it. Every outcome leaves a receipt.
    pub async fn register_passkey(
        &self,
        transport: &'static str,
        submitter: &Principal,
        challenge: &str,
        response: &RegistrationResponse,
    ) -> Result<PasskeyRegistered, ApprovalError> {
        let mut record = CallRecord::new(transport, PASSKEY);
        record.caller(submitter);
        let approver = self
            .policy
            .approvers
            .approver_for_subject(submitter.subject())
            .map(String::from);
        let result = self
            .check_registration(approver.as_deref(), challenge, response)
            .await;
        let approver = approver.unwrap_or_default();
        let outcome = result
            .as_ref()
            .map_err(|e| *e)
            .map(|passkey| passkey_outcome(passkey, false));
        let receipt = self
            .record_decided(record, outcome, Decision::PasskeyRegistered, &approver)
            .await?;
        let passkey = result?;
        let alg = crate::webauthn::CredentialKey::from_cose_b64(&passkey.public_key)
            .map(|k| k.alg())
            .unwrap_or_default();
        Ok(PasskeyRegistered {
            approver: passkey.approver_id,
            credential_id: passkey.credential_id,
            alg,
            confirmed: false,
            receipt,
        })
    }

    async fn check_registration(
        &self,
        approver: Option<&str>,
        challenge: &str,
        response: &RegistrationResponse,
    ) -> Result<StoredPasskey, ApprovalError> {
        let approver = approver.ok_or(ApprovalError::WrongSubmitter)?;
        self.policy
            .limits
            .check_approver(approver)
            .map_err(|_| ApprovalError::RateLimited)?;
        let challenge = self.check_challenge(approver, challenge)?;
        let registration =
            verify_registration(self.policy.approvers.relying_party(), &challenge, response)
                .map_err(ApprovalError::Passkey)?;
        let credential_id = URL_SAFE_NO_PAD.encode(&registration.credential_id);
        let public_key = registration.key.cose_b64();
        let known = self
            .store
            .passkeys(None)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?;
        let pending = known
            .iter()
            .filter(|p| p.approver_id == approver && !p.confirmed && p.revoked_at.is_none())
            .count();
        if pending >= MAX_PENDING_PER_APPROVER {
            return Err(ApprovalError::TooManyPendingPasskeys);
        }
        // One passkey belongs to one approver: neither its id nor its public
        // key (which anyone can copy from the approvers document) may be
        // registered again, or one person's assertion could count twice.
        let pinned = self.policy.approvers.all().iter().any(|a| {
            a.passkeys
                .iter()
                .any(|p| p.credential_id == credential_id || p.key.cose_b64() == public_key)
        });
        let registered = known.iter().any(|p| p.public_key == public_key);
        if pinned || registered {
            return Err(ApprovalError::Duplicate);
        }
        let passkey = StoredPasskey {
            credential_id,
            approver_id: approver.to_string(),
            public_key,
            confirmed: false,
            registered_at: self.clock.now_unix(),
            confirmed_at: None,
            revoked_at: None,
        };
        match self
            .store
            .register_passkey(&passkey, registration.sign_count)
            .await
        {
            Ok(()) => Ok(passkey),
            Err(StoreError::Duplicate) => Err(ApprovalError::Duplicate),
            Err(_) => Err(ApprovalError::StoreUnavailable),
        }
    }

    /// An operator's confirmation of a pending registration (the command
    /// line beside the server): from its receipt on, the passkey counts.
    pub async fn confirm_passkey(&self, credential_id: &str) -> Result<Receipt, ApprovalError> {
        let mut record = CallRecord::new("cli", PASSKEY);
        record.operator();
        let result = self.pending_passkey(credential_id).await;
        let approver = result
            .as_ref()
            .map(|p| p.approver_id.clone())
            .unwrap_or_default();
        let outcome = result
            .as_ref()
            .map_err(|e| *e)
            .map(|passkey| passkey_outcome(passkey, true));
        // The receipt first, then the change: a passkey never counts
        // without the receipt that lets an auditor count it too.
        let receipt = self
            .record_decided(record, outcome, Decision::PasskeyConfirmed, &approver)
            .await?;
        match self
            .store
            .confirm_passkey(credential_id, self.clock.now_unix())
            .await
        {
            Ok(true) => Ok(receipt),
            // Revoked in between: it stays revoked.
            Ok(false) => Err(ApprovalError::NoPendingPasskey),
            Err(_) => Err(ApprovalError::StoreUnavailable),
        }
    }

    /// An operator's revocation of a registered passkey (a lost or retired
    /// authenticator): from its receipt on it counts for nothing, including
    /// approvals it gave to calls that still wait. The change comes before
    /// its receipt, so a revoked passkey stops counting even when the log
    /// cannot be written.
    pub async fn revoke_passkey(&self, credential_id: &str) -> Result<Receipt, ApprovalError> {
        let mut record = CallRecord::new("cli", PASSKEY);
        record.operator();
        let result = match self
            .store
            .revoke_passkey(credential_id, self.clock.now_unix())
            .await
        {
            Ok(Some(passkey)) => Ok(passkey),
            Ok(None) => Err(ApprovalError::NoPasskeyToRevoke),
            Err(_) => Err(ApprovalError::StoreUnavailable),
        };
        let approver = result
            .as_ref()
            .map(|p| p.approver_id.clone())
            .unwrap_or_default();
        let outcome = result.as_ref().map_err(|e| *e).map(|passkey| {
            serde_json::json!({
                "approver": passkey.approver_id,
                "credential_id": passkey.credential_id,
            })
        });
        self.record_decided(record, outcome, Decision::PasskeyRevoked, &approver)
            .await
    }

    /// The registration `credential_id` names, if it waits for confirmation.
    async fn pending_passkey(&self, credential_id: &str) -> Result<StoredPasskey, ApprovalError> {
        self.store
            .passkeys(None)
            .await
            .map_err(|_| ApprovalError::StoreUnavailable)?
            .into_iter()
            .find(|p| p.credential_id == credential_id && !p.confirmed && p.revoked_at.is_none())
            .ok_or(ApprovalError::NoPendingPasskey)
    }

    /// Every approver's Ed25519 key and passkeys (pinned, and registered
    /// with whether they are confirmed), with the relying party: what an
    /// auditor needs to re-check every approval in an exported log.
    pub async fn approvers_document(&self) -> Result<serde_json::Value, StoreError> {
        let registered = self.store.passkeys(None).await?;
        let registry = &self.policy.approvers;
        let approvers: Vec<serde_json::Value> = registry
            .all()
            .iter()
            .map(|a| {
                let mut passkeys: Vec<serde_json::Value> = a
                    .passkeys
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "credential_id": p.credential_id,
                            "public_key": p.key.cose_b64(),
                            "alg": p.key.alg(),
                            "source": "config",
                            "confirmed": true,
                        })
                    })
                    .collect();
                passkeys.extend(registered.iter().filter(|p| p.approver_id == a.id).map(|p| {
                    serde_json::json!({
                        "credential_id": p.credential_id,
                        "public_key": p.public_key,
                        "alg": crate::webauthn::CredentialKey::from_cose_b64(&p.public_key).map(|k| k.alg()).ok(),
                        "source": "registered",
                        "confirmed": p.confirmed,
                        "registered_at": p.registered_at,
                        "confirmed_at": p.confirmed_at,
                        "revoked_at": p.revoked_at,
                    })
                }));
                serde_json::json!({
                    "id": a.id,
                    "public_key": a.key.map(|k| URL_SAFE_NO_PAD.encode(k.as_bytes())),
                    "passkeys": passkeys,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "type": APPROVERS_DOCUMENT_TYPE,
            "relying_party": registry.relying_party(),
            "approvers": approvers,
        }))
    }
}

/// What a registration's or confirmation's receipt says of the passkey:
/// enough for an auditor to check its approvals with the log alone.
fn passkey_outcome(passkey: &StoredPasskey, confirmed: bool) -> serde_json::Value {
    serde_json::json!({
        "approver": passkey.approver_id,
        "credential_id": passkey.credential_id,
        "public_key": passkey.public_key,
        "confirmed": confirmed,
    })
}

/// The `type` of the approvers document (`/.well-known/dualtrust-approvers.json`).
pub const APPROVERS_DOCUMENT_TYPE: &str = "dualtrust.approvers.v1";
