//! Who is asking: JWT access-token verification reduced to a [`Principal`].
//!
//! Order of checks (as jsonwebtoken's own `decode`, with every optional
//! check turned on): size cap, header parse, key selection by `kid`, the
//! key's own algorithm must equal the header's (the algorithm comes from the
//! key, never from the token alone, so `alg: none` and RS256→HS256 key
//! confusion cannot pass), signature, and only then the claims: `exp`, `nbf`,
//! `iss`, `aud` (RFC 8707: this server) and `sub` are required (RFC 7519
//! section 4.1).
//!
//! A [`Principal`] has private fields and no public constructor: holding one
//! proves a token was verified here.

use std::collections::BTreeSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::config::IdentityConfig;
use crate::keys::KeyPair;

/// Why a token was not accepted. `Display` is the text a client may see:
/// fixed words, never token bytes or library internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No token was presented.
    #[error("no bearer token was presented")]
    Missing,
    /// The token is larger than the configured cap.
    #[error("the token is too large")]
    TooLarge,
    /// The token is not a well-formed compact JWS with a supported algorithm.
    #[error("the token is malformed")]
    Malformed,
    /// No trusted key matches the token's `kid`.
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    /// The header's `alg` is not the algorithm of the selected key.
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by an untrusted issuer")]
    WrongIssuer,
    #[error("the token was issued for another audience")]
    WrongAudience,
    /// `exp`, `iss`, `aud` or `sub` is missing or has the wrong type.
    #[error("the token lacks a required claim")]
    MissingClaim,
    /// The token's `jti` was revoked.
    #[error("the token has been revoked")]
    Revoked,
}

impl IdentityError {
    /// A stable machine-readable name, used in receipts and logs.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::TooLarge => "token_too_large",
            Self::Malformed => "malformed_token",
            Self::UnknownKey => "unknown_key",
            Self::AlgorithmMismatch => "algorithm_mismatch",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::MissingClaim => "missing_claim",
            Self::Revoked => "revoked",
        }
    }
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    subject: String,
    scopes: BTreeSet<String>,
    token_id: Option<String>,
    expires_at: u64,
}

impl Principal {
    pub fn subject(&self) -> &str {
        &self.subject
    }
    pub fn scopes(&self) -> &BTreeSet<String> {
        &self.scopes
    }
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
    pub fn token_id(&self) -> Option<&str> {
        self.token_id.as_deref()
    }
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct AccessClaims {
    // Optional here so that a missing claim is reported as such by the
    // validation step rather than as a malformed token.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    /// RFC 8693 / OAuth: space-separated.
    #[serde(default)]
    scope: Option<String>,
    /// Okta, Entra: string or array.
    #[serde(default)]
    scp: Option<StringOrList>,
    /// Auth0 RBAC.
    #[serde(default)]
    permissions: Option<Vec<String>>,
}

impl AccessClaims {
    fn scopes(self) -> BTreeSet<String> {
        let mut scopes = BTreeSet::new();
        let words = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        if let Some(s) = self.scope {
            scopes.extend(words(&s));
        }
        match self.scp {
            Some(StringOrList::One(s)) => scopes.extend(words(&s)),
            Some(StringOrList::Many(v)) => scopes.extend(v),
            None => {}
        }
        scopes.extend(self.permissions.unwrap_or_default());
        scopes
    }
}

struct TrustedKey {
    kid: String,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// Verifies access tokens against the configured trusted keys.
pub struct TokenVerifier {
    keys: Vec<TrustedKey>,
    issuer: String,
    audience: String,
    leeway_s: u64,
    max_token_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierSetupError {
    #[error("cannot read JWKS file {path}: {message}")]
    Jwks { path: String, message: String },
    #[error(
        "no token issuer is configured: enable identity.dev_tokens (development) or set identity.jwks_file"
    )]
    NoKeys,
}

impl TokenVerifier {
    pub fn new(
        config: &IdentityConfig,
        dev_issuer: Option<&KeyPair>,
    ) -> Result<Self, VerifierSetupError> {
        let mut keys = Vec::new();
        if let Some(dev) = dev_issuer {
            let jwk: jsonwebtoken::jwk::Jwk =
                serde_json::from_value(dev.public_jwk()).map_err(|_| VerifierSetupError::NoKeys)?;
            let key = DecodingKey::from_jwk(&jwk).map_err(|_| VerifierSetupError::NoKeys)?;
            keys.push(TrustedKey {
                kid: dev.kid().to_string(),
                algorithm: Algorithm::EdDSA,
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            keys.extend(load_jwks_file(path)?);
        }
        if keys.is_empty() {
            return Err(VerifierSetupError::NoKeys);
        }
        Ok(Self {
            keys,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            max_token_bytes: config.max_token_bytes,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        if token.is_empty() {
            return Err(IdentityError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(IdentityError::TooLarge);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        let trusted = match &header.kid {
            Some(kid) => self.keys.iter().find(|k| &k.kid == kid),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .ok_or(IdentityError::UnknownKey)?;
        if trusted.algorithm != header.alg {
            return Err(IdentityError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(trusted.algorithm);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &trusted.key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        let mut claims = data.claims;
        let (Some(subject), Some(expires_at)) = (claims.sub.take(), claims.exp) else {
            return Err(IdentityError::MissingClaim);
        };
        if subject.trim().is_empty() {
            return Err(IdentityError::MissingClaim);
        }
        Ok(Principal {
            subject,
            token_id: claims.jti.take(),
            expires_at,
            scopes: claims.scopes(),
        })
    }
}

fn map_jwt_error(kind: &ErrorKind) -> IdentityError {
    match kind {
        ErrorKind::InvalidSignature => IdentityError::BadSignature,
        ErrorKind::ExpiredSignature => IdentityError::Expired,
        ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
        ErrorKind::InvalidIssuer => IdentityError::WrongIssuer,
        ErrorKind::InvalidAudience => IdentityError::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            IdentityError::MissingClaim
        }
        ErrorKind::InvalidAlgorithm => IdentityError::AlgorithmMismatch,
        _ => IdentityError::Malformed,
    }
}

fn load_jwks_file(path: &std::path::Path) -> Result<Vec<TrustedKey>, VerifierSetupError> {
    let err = |message: String| VerifierSetupError::Jwks {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
            // Symmetric keys in a JWKS would let anyone holding the file mint
            // tokens; other curves are unsupported.
            _ => continue,
        };
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| err("every key needs a `kid`".into()))?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| err(e.to_string()))?;
        keys.push(TrustedKey {
            kid,
            algorithm,
            key,
        });
    }
    Ok(keys)
}

/// Claims of a development token minted by `dualtrust token`.
#[derive(serde::Serialize)]
pub struct DevTokenClaims<'a> {
    pub iss: &'a str,
    pub aud: &'a str,
    pub sub: &'a str,
    pub scope: &'a str,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn setup() -> (KeyPair, TokenVerifier, IdentityConfig) {
        let config = IdentityConfig::default();
        let issuer = KeyPair::generate().expect("key");
        let verifier = TokenVerifier::new(&config, Some(&issuer)).expect("verifier");
        (issuer, verifier, config)
    }

    fn mint(
        issuer: &KeyPair,
        config: &IdentityConfig,
        edit: impl FnOnce(&mut serde_json::Value),
    ) -> String {
        let now = crate::now_unix();
        let mut claims = serde_json::json!({
            "iss": config.issuer, "aud": config.audience, "sub": "alice",
            "scope": "db:read audit:read", "iat": now, "exp": now + 600, "jti": "t1"
        });
        edit(&mut claims);
        issuer.sign_jws("JWT", &claims).expect("sign")
    }

    #[test]
    fn honest_token_yields_principal_with_scopes() {
        let (issuer, verifier, config) = setup();
        let p = verifier
            .verify(&mint(&issuer, &config, |_| {}))
            .expect("valid");
        assert_eq!(p.subject(), "alice");
        assert!(p.has_scope("db:read") && p.has_scope("audit:read") && !p.has_scope("db:write"));
    }

    #[test]
    fn scopes_from_scp_and_permissions() {
        let (issuer, verifier, config) = setup();
        let t = mint(&issuer, &config, |c| {
            c.as_object_mut().map(|o| o.remove("scope"));
            c["scp"] = serde_json::json!(["a", "b"]);
            c["permissions"] = serde_json::json!(["c"]);
        });
        let p = verifier.verify(&t).expect("valid");
        assert!(p.has_scope("a") && p.has_scope("b") && p.has_scope("c"));
    }

    #[test]
    fn attacks_are_rejected() {
        let (issuer, verifier, config) = setup();
        let now = crate::now_unix();
        let cases: Vec<(&str, String, IdentityError)> = vec![
            (
                "expired",
                mint(&issuer, &config, |c| c["exp"] = (now - 3600).into()),
                IdentityError::Expired,
            ),
            (
                "nbf future",
                mint(&issuer, &config, |c| c["nbf"] = (now + 3600).into()),
                IdentityError::NotYetValid,
            ),
            (
                "issuer",
                mint(&issuer, &config, |c| c["iss"] = "evil".into()),
                IdentityError::WrongIssuer,
            ),
            (
                "audience",
                mint(&issuer, &config, |c| c["aud"] = "other".into()),
                IdentityError::WrongAudience,
            ),
            (
                "audience list",
                mint(&issuer, &config, |c| {
                    c["aud"] = serde_json::json!(["x", "y"])
                }),
                IdentityError::WrongAudience,
            ),
            (
                "no sub",
                mint(&issuer, &config, |c| {
                    c.as_object_mut().map(|o| o.remove("sub"));
                }),
                IdentityError::MissingClaim,
            ),
            (
                "no exp",
                mint(&issuer, &config, |c| {
                    c.as_object_mut().map(|o| o.remove("exp"));
                }),
                IdentityError::MissingClaim,
            ),
            (
                "other key",
                mint(&KeyPair::generate().expect("key"), &config, |_| {}),
                IdentityError::UnknownKey,
            ),
            ("garbage", "not.a.token".into(), IdentityError::Malformed),
            ("empty", String::new(), IdentityError::Missing),
            (
                "huge",
                "a".repeat(config.max_token_bytes + 1),
                IdentityError::TooLarge,
            ),
        ];
        for (name, token, want) in cases {
            assert_eq!(verifier.verify(&token).err(), Some(want), "{name}");
        }
    }

    #[test]
    fn alg_none_and_tampering_are_rejected() {
        let (issuer, verifier, config) = setup();
        let honest = mint(&issuer, &config, |_| {});
        let parts: Vec<&str> = honest.split('.').collect();
        // alg none, no signature.
        let none_header = B64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.kid()));
        let none = format!("{none_header}.{}.", parts[1]);
        assert_eq!(verifier.verify(&none).err(), Some(IdentityError::Malformed));
        // HS256 header on our EdDSA key (key confusion).
        let hs_header = B64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, issuer.kid()));
        let hs = format!("{hs_header}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            verifier.verify(&hs).err(),
            Some(IdentityError::AlgorithmMismatch)
        );
        // Payload edited after signing.
        let mut claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(parts[1]).expect("b64")).expect("json");
        claims["scope"] = "db:admin".into();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(claims.to_string()),
            parts[2]
        );
        assert_eq!(
            verifier.verify(&forged).err(),
            Some(IdentityError::BadSignature)
        );
    }
}
