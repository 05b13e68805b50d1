//! `passport.issue`: a signed, short-lived attestation of an agent's
//! identity, session and redacted health.
//!
//! A passport is an RFC 7515 compact JWS (`alg: EdDSA`, `typ: passport+jwt`)
//! signed by the server key and verifiable with the server's published JWKS
//! by any JOSE library. Its claims are RFC 7519 registered claims (`iss`,
//! `sub`, `iat`, `nbf`, `exp`, `jti`) plus `sid` (session), `act` (RFC 8693:
//! who requested it) and `health`. `exp` is fixed at issue time and covered
//! by the signature; the key that verifies it is never taken from the
//! passport itself.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::PassportConfig;
use crate::gate::{Authorized, Class, Classification, Executed, Refusal, Tool};
use crate::keyring::ServerKeys;
use crate::keys::PublishedKey;

pub const PASSPORT_TYP: &str = "passport+jwt";
const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Unknown,
}

/// The agent's health, redacted to what a relying party may see.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub status: HealthStatus,
    /// The agent's software version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassportArgs {
    /// The agent the passport is about (becomes `sub`).
    pub agent_id: String,
    /// The agent's session (becomes `sid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Lifetime in seconds (capped by policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

pub struct PassportIssuer {
    keys: Arc<ServerKeys>,
    config: PassportConfig,
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:@/".contains(c))
}

impl PassportIssuer {
    pub fn new(keys: Arc<ServerKeys>, config: PassportConfig) -> Self {
        Self { keys, config }
    }
}

impl Tool for PassportIssuer {
    const NAME: &'static str = "passport.issue";
    const TITLE: &'static str = "Issue an agent passport";
    const DESCRIPTION: &'static str = "Issues a short-lived passport: a compact JWS (EdDSA) signed by this server \
        attesting an agent's id, session and redacted health, verifiable by anyone with the server's JWKS \
        (/.well-known/jwks.json). Needs `passport:issue`.";
    const READ_ONLY: bool = false;
    type Args = PassportArgs;
    type Plan = ();

    fn classify(&self, args: &PassportArgs) -> Result<Classification, Refusal> {
        if !valid_id(&args.agent_id) {
            return Err(Refusal::new(
                "invalid_agent_id",
                format!("agent_id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . : @ /"),
            ));
        }
        if let Some(sid) = &args.session_id
            && !valid_id(sid)
        {
            return Err(Refusal::new(
                "invalid_session_id",
                format!("session_id must be 1-{MAX_ID_LEN} characters of A-Z a-z 0-9 - _ . : @ /"),
            ));
        }
        if let Some(version) = args.health.as_ref().and_then(|h| h.version.as_ref())
            && (version.len() > 64 || version.chars().any(char::is_control))
        {
            return Err(Refusal::new(
                "invalid_health",
                "health.version is limited to 64 printable characters",
            ));
        }
        let ttl = args.ttl_s.unwrap_or(self.config.default_ttl_s);
        if ttl == 0 || ttl > self.config.max_ttl_s {
            return Err(Refusal::new(
                "invalid_ttl",
                format!("ttl_s must be between 1 and {}", self.config.max_ttl_s),
            ));
        }
        Ok(Classification {
            class: Class::Write,
            summary: format!("issue a {ttl} s passport for agent `{}`", args.agent_id),
            plan: (),
        })
    }

    async fn execute(&self, call: Authorized<'_, Self>) -> Result<Executed, Refusal> {
        let args = call.args();
        let now = crate::now_unix();
        let ttl = args.ttl_s.unwrap_or(self.config.default_ttl_s);
        let jti = crate::random_id()
            .map_err(|_| Refusal::new("internal", "random source unavailable"))?;
        let claims = json!({
            "iss": self.config.issuer,
            "sub": args.agent_id,
            "iat": now,
            "nbf": now,
            "exp": now + ttl,
            "jti": jti,
            "sid": args.session_id,
            "act": { "sub": call.principal().subject() },
            "health": args.health.clone().unwrap_or(Health { status: HealthStatus::Unknown, version: None }),
        });
        // A replica that lags a rotation signs nothing: what the retired
        // key signs now would not verify.
        let key = self.keys.signing().map_err(|_| {
            Refusal::new(
                "audit_unavailable",
                "the server key was rotated and this replica does not hold the new key yet",
            )
        })?;
        let passport = key
            .sign_jws(PASSPORT_TYP, &claims)
            .map_err(|_| Refusal::new("internal", "the passport could not be signed"))?;
        let outcome = json!({ "jti": jti, "sub": args.agent_id, "exp": now + ttl });
        Ok(Executed {
            result: json!({ "passport": passport, "claims": claims, "kid": key.kid(), "jwks_uri": "/.well-known/jwks.json" }),
            outcome,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PassportError {
    #[error("not a compact JWS")]
    Malformed,
    #[error("not a passport: wrong `alg` or `typ`")]
    WrongType,
    #[error("signed by a key that is not this server's")]
    UnknownKey,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("issued by another issuer")]
    WrongIssuer,
    #[error("the passport has expired")]
    Expired,
    #[error("the passport is not valid yet")]
    NotYetValid,
    #[error("signed by a server key after its retirement")]
    KeyRetired,
}

impl PassportError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongType => "wrong_type",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "signature",
            Self::WrongIssuer => "issuer",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::KeyRetired => "key_retired",
        }
    }
}

/// Verifies a passport against this server's keys; returns its claims. The
/// compact form is held to the same strictness as access tokens (three
/// unpadded segments, no repeated member names); the signature is checked by
/// `jsonwebtoken`, against the key the header names, for EdDSA only.
///
/// A retired key's passports verify only if issued before its retirement
/// and no longer-lived than `max_ttl_s`: whatever `iat` a leaked retired
/// key writes, nothing it signs is valid past retirement plus the longest
/// lifetime.
pub fn verify_passport(
    token: &str,
    keys: &[PublishedKey],
    issuer: &str,
    max_ttl_s: u64,
    now: u64,
) -> Result<Value, PassportError> {
    crate::identity::strict_header(token).map_err(|_| PassportError::Malformed)?;
    let header = jsonwebtoken::decode_header(token).map_err(|_| PassportError::Malformed)?;
    if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(PASSPORT_TYP) {
        return Err(PassportError::WrongType);
    }
    let kid = header.kid.as_deref().ok_or(PassportError::UnknownKey)?;
    let published = keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or(PassportError::UnknownKey)?;
    let key = DecodingKey::from_ed_der(published.key.as_bytes());
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "iss"]);
    // The times are checked below against `now`, the caller's clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => PassportError::BadSignature,
            ErrorKind::InvalidIssuer => PassportError::WrongIssuer,
            _ => PassportError::Malformed,
        })?
        .claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(PassportError::Malformed)?;
    if published.is_retired() {
        let iat = claims
            .get("iat")
            .and_then(Value::as_u64)
            .ok_or(PassportError::KeyRetired)?;
        if !published.signs_at(iat) || exp.saturating_sub(iat) > max_ttl_s {
            return Err(PassportError::KeyRetired);
        }
    }
    if exp <= now {
        return Err(PassportError::Expired);
    }
    if claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|nbf| nbf > now)
    {
        return Err(PassportError::NotYetValid);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyPair;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    #[test]
    fn passport_verification_catches_tampering() {
        let key = KeyPair::generate().expect("key");
        let keys = vec![PublishedKey::unbounded(key.verifying_key())];
        let claims = json!({"iss": "dualtrust", "sub": "agent-1", "exp": 2000, "nbf": 1000});
        let token = key.sign_jws(PASSPORT_TYP, &claims).expect("sign");
        assert!(verify_passport(&token, &keys, "dualtrust", 3600, 1500).is_ok());
        assert_eq!(
            verify_passport(&token, &keys, "dualtrust", 3600, 2000),
            Err(PassportError::Expired)
        );
        assert_eq!(
            verify_passport(&token, &keys, "dualtrust", 3600, 500),
            Err(PassportError::NotYetValid)
        );
        assert_eq!(
            verify_passport(&token, &keys, "other", 3600, 1500),
            Err(PassportError::WrongIssuer)
        );
        // Extending the expiry after signing breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let later = URL_SAFE_NO_PAD
            .encode(json!({"iss": "dualtrust", "sub": "agent-1", "exp": 9999}).to_string());
        let forged = format!("{}.{later}.{}", parts[0], parts[2]);
        assert_eq!(
            verify_passport(&forged, &keys, "dualtrust", 3600, 1500),
            Err(PassportError::BadSignature)
        );
        let other = KeyPair::generate().expect("key");
        let other_keys = vec![PublishedKey {
            kid: key.kid().to_string(),
            ..PublishedKey::unbounded(other.verifying_key())
        }];
        assert_eq!(
            verify_passport(&token, &other_keys, "dualtrust", 3600, 1500),
            Err(PassportError::BadSignature)
        );
        assert_eq!(
            verify_passport("a.b", &keys, "dualtrust", 3600, 1500),
            Err(PassportError::Malformed)
        );
        // A repeated claim must not mean whichever one a parser keeps.
        let header = URL_SAFE_NO_PAD
            .encode(json!({ "alg": "EdDSA", "typ": PASSPORT_TYP, "kid": key.kid() }).to_string());
        let repeated = URL_SAFE_NO_PAD
            .encode(r#"{"iss":"other","iss":"dualtrust","sub":"agent-1","exp":2000}"#);
        let input = format!("{header}.{repeated}");
        let signed = format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()))
        );
        assert_eq!(
            verify_passport(&signed, &keys, "dualtrust", 3600, 1500),
            Err(PassportError::Malformed)
        );
        // An access token (typ JWT) is not a passport.
        let jwt = key.sign_jws("JWT", &claims).expect("sign");
        assert_eq!(
            verify_passport(&jwt, &keys, "dualtrust", 3600, 1500),
            Err(PassportError::WrongType)
        );
    }

    #[test]
    fn a_retired_key_signs_no_passport_that_outlives_its_retirement() {
        let key = KeyPair::generate().expect("key");
        let retired = vec![PublishedKey {
            not_after: Some(1_000),
            until_seq: Some(10),
            ..PublishedKey::unbounded(key.verifying_key())
        }];
        let sign = |iat: u64, exp: u64| {
            key.sign_jws(
                PASSPORT_TYP,
                &json!({"iss": "dualtrust", "sub": "a", "iat": iat, "exp": exp}),
            )
            .expect("sign")
        };
        // Issued before retirement, still within its lifetime: valid.
        assert!(verify_passport(&sign(900, 1_500), &retired, "dualtrust", 3600, 1_200).is_ok());
        // After retirement, or back-dated with a lifetime past the longest.
        for token in [sign(1_001, 1_500), sign(900, 900 + 3601)] {
            assert_eq!(
                verify_passport(&token, &retired, "dualtrust", 3600, 1_200),
                Err(PassportError::KeyRetired)
            );
        }
        let no_iat = key
            .sign_jws(
                PASSPORT_TYP,
                &json!({"iss": "dualtrust", "sub": "a", "exp": 1_500}),
            )
            .expect("sign");
        assert_eq!(
            verify_passport(&no_iat, &retired, "dualtrust", 3600, 1_200),
            Err(PassportError::KeyRetired)
        );
    }
}
