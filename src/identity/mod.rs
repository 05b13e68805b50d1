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

mod jwks;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::config::IdentityConfig;
use crate::keys::KeyPair;

pub use jwks::JwksCounters;
use jwks::{RemoteJwks, TrustedKey};

/// Why a token was not accepted. `Display` is the text a client may see:
/// fixed words, never token bytes or library internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// No token was presented.
    #[error("no bearer token was presented")]
    Missing,
    /// More than one credential was sent (two `Authorization` headers): which
    /// one is meant is a guess, so neither is used (RFC 6750 section 3.1).
    #[error("more than one credential was presented")]
    DuplicateCredentials,
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
    /// The header's `crit` names extensions; this server implements none,
    /// so RFC 7515 section 4.1.11 says the token must be rejected.
    #[error("the token requires a header extension this server does not implement")]
    UnsupportedCritical,
    /// The header's `typ` says this is not an access token (RFC 8725
    /// section 3.11): a passport or another kind of JWT.
    #[error("the token is not an access token")]
    WrongType,
    /// `iat` lies beyond the allowed clock skew in the future.
    #[error("the token's issue time is in the future")]
    IssuedInFuture,
    /// The token's `jti` was revoked.
    #[error("the token has been revoked")]
    Revoked,
    /// The revocation list could not be read: the token is not accepted
    /// (fail closed), but it is not known to be bad either.
    #[error("the token cannot be checked right now; retry later")]
    Unavailable,
}

impl IdentityError {
    /// A stable machine-readable name, used in receipts and logs.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "missing_token",
            Self::DuplicateCredentials => "duplicate_credentials",
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
            Self::UnsupportedCritical => "unsupported_critical_header",
            Self::WrongType => "wrong_token_type",
            Self::IssuedInFuture => "issued_in_future",
            Self::Revoked => "revoked",
            Self::Unavailable => "revocation_unavailable",
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
    /// The token claims `identity.claims` names, as text (strings as they
    /// are, other JSON values in their JSON form); absent ones are missing.
    claims: BTreeMap<String, String>,
}

impl Principal {
    /// A claim `identity.claims` keeps, if the token carried it.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims.get(name).map(String::as_str)
    }
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

    /// The nobody a gate-off benchmark run hands to tools.
    #[cfg(feature = "bench")]
    pub(crate) fn unverified_for_benchmark() -> Self {
        Self {
            subject: "benchmark (gate off)".into(),
            scopes: BTreeSet::new(),
            token_id: None,
            expires_at: u64::MAX,
            claims: BTreeMap::new(),
        }
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
    #[serde(default)]
    iat: Option<u64>,
    /// RFC 8693 / OAuth: space-separated.
    #[serde(default)]
    scope: Option<String>,
    /// Okta, Entra: string or array.
    #[serde(default)]
    scp: Option<StringOrList>,
    /// Auth0 RBAC.
    #[serde(default)]
    permissions: Option<Vec<String>>,
    /// Everything else; only the claims `identity.claims` names are kept.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
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

/// Verifies access tokens against the configured trusted keys.
pub struct TokenVerifier {
    verified: VerifiedTokens,
    static_keys: Vec<TrustedKey>,
    remote: Option<RemoteJwks>,
    issuer: String,
    audience: String,
    leeway_s: u64,
    max_token_bytes: usize,
    implies: BTreeMap<String, Vec<String>>,
    kept_claims: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifierSetupError {
    #[error("cannot use JWKS file {path}: {message}")]
    Jwks { path: String, message: String },
    #[error("cannot use public key {path}: {message}")]
    Pem { path: String, message: String },
    #[error("identity.jwks_url: {0}")]
    JwksUrl(String),
    #[error(
        "no token issuer is configured: enable identity.dev_tokens (development) or set identity.jwks_url, identity.jwks_file, identity.public_keys or identity.hs256_secret"
    )]
    NoKeys,
}

impl TokenVerifier {
    /// Loads every configured key source. A JWKS URL is only prepared here;
    /// [`TokenVerifier::prime`] fetches it.
    pub fn new(
        config: &IdentityConfig,
        dev_issuer: Option<&KeyPair>,
        implies: &BTreeMap<String, Vec<String>>,
    ) -> Result<Self, VerifierSetupError> {
        let mut keys = Vec::new();
        if let Some(dev) = dev_issuer {
            let set = serde_json::json!({ "keys": [dev.public_jwk()] });
            keys.extend(
                jwks::parse_set(set.to_string().as_bytes())
                    .map_err(|_| VerifierSetupError::NoKeys)?,
            );
        }
        if let Some(path) = &config.jwks_file {
            let err = |message: String| VerifierSetupError::Jwks {
                path: path.display().to_string(),
                message,
            };
            let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            keys.extend(jwks::parse_set(&bytes).map_err(err)?);
        }
        for entry in &config.public_keys {
            let err = |message: String| VerifierSetupError::Pem {
                path: entry.pem_file.display().to_string(),
                message,
            };
            let pem = std::fs::read(&entry.pem_file).map_err(|e| err(e.to_string()))?;
            keys.push(jwks::key_from_pem(entry.kid.clone(), entry.alg, &pem).map_err(err)?);
        }
        if let Some(secret) = &config.hs256_secret {
            keys.push(TrustedKey {
                kid: config.hs256_kid.clone(),
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.expose().as_bytes()),
            });
        }
        let remote = match &config.jwks_url {
            Some(url) => Some(
                RemoteJwks::new(
                    url.clone(),
                    Duration::from_secs(config.jwks_cache_s),
                    Duration::from_secs(config.jwks_min_refresh_s),
                    Duration::from_millis(config.jwks_timeout_ms),
                )
                .map_err(VerifierSetupError::JwksUrl)?,
            ),
            None => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(VerifierSetupError::NoKeys);
        }
        Ok(Self {
            verified: VerifiedTokens::default(),
            static_keys: keys,
            remote,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            max_token_bytes: config.max_token_bytes,
            implies: implies.clone(),
            kept_claims: config.claims.clone(),
        })
    }

    /// A verifier that trusts no key: every token is refused. For contexts
    /// that authenticate nobody (the command line works on the store as
    /// its operator), so they need no identity provider.
    pub fn trusting_no_one(config: &IdentityConfig) -> Self {
        Self {
            verified: VerifiedTokens::default(),
            static_keys: Vec::new(),
            remote: None,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            max_token_bytes: config.max_token_bytes,
            implies: BTreeMap::new(),
            kept_claims: Vec::new(),
        }
    }

    /// Fetches the JWKS URL, if one is configured. A failure is logged and
    /// reported by [`TokenVerifier::keys_loaded`]; later tokens retry.
    pub async fn prime(&self) {
        if let Some(remote) = &self.remote {
            remote.prime().await;
        }
    }

    /// While a configured JWKS URL has never been fetched, fetches it again
    /// in the background (after 1 s, doubling to at most a minute, and never
    /// more often than `jwks_min_refresh_s`), so readiness comes back by
    /// itself: behind a load balancer that routes nothing to an unready
    /// instance, no token would ever arrive to trigger a fetch. Stops once
    /// keys are held or the verifier is gone.
    pub fn retry_until_loaded(self: &std::sync::Arc<Self>) {
        if self.keys_loaded() {
            return;
        }
        let verifier = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            loop {
                tokio::time::sleep(wait).await;
                let Some(verifier) = verifier.upgrade() else {
                    return;
                };
                verifier.prime().await;
                if verifier.keys_loaded() {
                    tracing::info!("the JWKS loaded after retrying; tokens are accepted");
                    return;
                }
                wait = (wait * 2).min(Duration::from_secs(60));
            }
        });
    }

    /// Whether every configured key source has keys (for `/readyz`).
    pub fn keys_loaded(&self) -> bool {
        self.remote.as_ref().is_none_or(|r| r.loaded())
    }

    /// JWKS fetch counters, when a JWKS URL is configured.
    pub fn jwks_counters(&self) -> Option<&JwksCounters> {
        self.remote.as_ref().map(|r| &r.counters)
    }

    fn static_key(&self, kid: Option<&str>) -> Option<&TrustedKey> {
        match kid {
            Some(kid) => self
                .static_keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid)),
            None => {
                let mut unnamed = self.static_keys.iter().filter(|k| k.kid.is_none());
                match (unnamed.next(), unnamed.next()) {
                    (Some(only), None) => Some(only),
                    (None, _) if self.static_keys.len() == 1 && self.remote.is_none() => {
                        self.static_keys.first()
                    }
                    _ => None,
                }
            }
        }
    }

    /// The token's own checks only: callers want [`crate::gate::Gate::authenticate`],
    /// which adds revocation and is the only way to an `Authenticated` caller.
    pub(crate) async fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        if token.is_empty() {
            return Err(IdentityError::Missing);
        }
        if token.len() > self.max_token_bytes {
            return Err(IdentityError::TooLarge);
        }
        let generation = match &self.remote {
            Some(remote) => remote.fresh_generation(),
            None => Some(0),
        };
        let fingerprint: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::digest(token.as_bytes()).into()
        };
        let now = crate::now_unix();
        if let Some(generation) = generation
            && let Some(principal) =
                self.verified
                    .get(&fingerprint, generation, now.saturating_sub(self.leeway_s))
        {
            return Ok(principal);
        }
        let principal = self.verify_signature_and_claims(token).await?;
        if let Some(generation) = generation {
            self.verified
                .insert(fingerprint, generation, principal.clone());
        }
        Ok(principal)
    }

    async fn verify_signature_and_claims(&self, token: &str) -> Result<Principal, IdentityError> {
        check_header(&strict_header(token)?)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        let kid = header.kid.as_deref();
        let trusted = match self.static_key(kid) {
            Some(key) => key.clone(),
            None => match &self.remote {
                Some(remote) => remote.find(kid).await.ok_or(IdentityError::UnknownKey)?,
                None => return Err(IdentityError::UnknownKey),
            },
        };
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
        if claims
            .iat
            .is_some_and(|iat| iat > crate::now_unix().saturating_add(self.leeway_s))
        {
            return Err(IdentityError::IssuedInFuture);
        }
        if subject.trim().is_empty() {
            return Err(IdentityError::MissingClaim);
        }
        let kept = self
            .kept_claims
            .iter()
            .filter_map(|name| {
                let text = match claims.other.get(name)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Some((name.clone(), text))
            })
            .collect();
        Ok(Principal {
            subject,
            token_id: claims.jti.take(),
            expires_at,
            claims: kept,
            scopes: expand_scopes(claims.scopes(), &self.implies),
        })
    }
}

/// The header of a compact JWS, refusing what a lenient parser would guess at:
/// other than three segments, padding or non-url-safe base64, and JSON
/// with a repeated member name in the header or the claims (RFC 7515
/// section 5.2 and RFC 8725 section 3.2: a repeated `alg` or `sub` must not
/// mean whichever one a library happens to keep).
pub(crate) fn strict_header(
    token: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, IdentityError> {
    use base64::Engine;
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(IdentityError::Malformed);
    };
    let decode = |segment: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(segment)
            .map_err(|_| IdentityError::Malformed)
    };
    let header = decode(header)?;
    let payload = decode(payload)?;
    for json in [&header, &payload] {
        serde_json::from_slice::<UniqueMembers>(json).map_err(|_| IdentityError::Malformed)?;
    }
    match serde_json::from_slice(&header) {
        Ok(serde_json::Value::Object(header)) => Ok(header),
        _ => Err(IdentityError::Malformed),
    }
}

/// `typ` values an access token may carry: none, the generic `JWT`, or
/// RFC 9068's `at+jwt` (case-insensitive, with or without `application/`).
fn is_access_token_type(typ: &str) -> bool {
    let typ = typ.to_ascii_lowercase();
    let typ = typ.strip_prefix("application/").unwrap_or(&typ);
    typ == "jwt" || typ == "at+jwt"
}

fn check_header(header: &serde_json::Map<String, serde_json::Value>) -> Result<(), IdentityError> {
    // No JWS extension is implemented here, so any `crit` (even an empty or
    // malformed one, which RFC 7515 forbids outright) is a rejection.
    if header.contains_key("crit") {
        return Err(IdentityError::UnsupportedCritical);
    }
    match header.get("typ") {
        None => Ok(()),
        Some(serde_json::Value::String(typ)) if is_access_token_type(typ) => Ok(()),
        Some(_) => Err(IdentityError::WrongType),
    }
}

/// Deserializes any JSON value, failing on an object with a repeated
/// member name at any depth.
struct UniqueMembers;

impl<'de> serde::Deserialize<'de> for UniqueMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueMembers;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON without repeated member names")
            }
            fn visit_bool<E>(self, _: bool) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_i64<E>(self, _: i64) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_u64<E>(self, _: u64) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_f64<E>(self, _: f64) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_str<E>(self, _: &str) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_unit<E>(self) -> Result<UniqueMembers, E> {
                Ok(UniqueMembers)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<UniqueMembers, A::Error> {
                while seq.next_element::<UniqueMembers>()?.is_some() {}
                Ok(UniqueMembers)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueMembers, A::Error> {
                let mut seen = std::collections::HashSet::new();
                while let Some(key) = map.next_key::<String>()? {
                    if !seen.insert(key) {
                        return Err(serde::de::Error::custom("repeated member name"));
                    }
                    map.next_value::<UniqueMembers>()?;
                }
                Ok(UniqueMembers)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Tokens already verified, by SHA-256 of the whole token. An agent sends
/// the same token on every call, and checking an RSA signature was the
/// largest single cost of a gated call (measured with `perf`: ~100 µs).
/// An entry is used only while the token has not expired and the key set
/// that verified it is unchanged and fresh; revocation is never cached (the
/// gate asks the store on every call). Only tokens that passed every check
/// get in, so a flood of forged tokens cannot fill it.
#[derive(Default)]
struct VerifiedTokens {
    entries: Mutex<HashMap<[u8; 32], (u64, Principal)>>,
}

/// Beyond this many distinct valid tokens the cache starts over.
const MAX_VERIFIED_TOKENS: usize = 10_000;

impl VerifiedTokens {
    /// The principal for `fingerprint` if it was verified under
    /// `generation` and its `exp` is not before `not_expired_at`.
    fn get(
        &self,
        fingerprint: &[u8; 32],
        generation: u64,
        not_expired_at: u64,
    ) -> Option<Principal> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(fingerprint) {
            Some((g, principal)) if *g == generation && principal.expires_at >= not_expired_at => {
                Some(principal.clone())
            }
            Some(_) => {
                entries.remove(fingerprint);
                None
            }
            None => None,
        }
    }

    fn insert(&self, fingerprint: [u8; 32], generation: u64, principal: Principal) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_VERIFIED_TOKENS {
            entries.clear();
        }
        entries.insert(fingerprint, (generation, principal));
    }
}

/// The granted scopes plus everything they imply, transitively (a scope
/// hierarchy such as `db:admin` ⊃ `db:write` ⊃ `db:read`).
fn expand_scopes(
    granted: BTreeSet<String>,
    implies: &BTreeMap<String, Vec<String>>,
) -> BTreeSet<String> {
    let mut all = granted.clone();
    let mut pending: Vec<String> = granted.into_iter().collect();
    while let Some(scope) = pending.pop() {
        for implied in implies.get(&scope).into_iter().flatten() {
            if all.insert(implied.clone()) {
                pending.push(implied.clone());
            }
        }
    }
    all
}

/// What an operator may log about a rejected token: a short hash that
/// identifies it without letting anyone replay it, and the subject it claims
/// (unverified, truncated).
pub fn token_fingerprint(token: &str) -> (String, Option<String>) {
    use base64::Engine;
    let hash = crate::sha256_hex(token.as_bytes());
    let claimed = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|claims| {
            claims
                .get("sub")?
                .as_str()
                .map(|s| s.chars().take(64).collect())
        });
    (hash[..12].to_string(), claimed)
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
    /// Further claims (`--claim tenant=a`), for `identity.claims`.
    #[serde(flatten)]
    pub extra: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    fn setup() -> (KeyPair, TokenVerifier, IdentityConfig) {
        let config = IdentityConfig::default();
        let issuer = KeyPair::generate().expect("key");
        let verifier = TokenVerifier::new(
            &config,
            Some(&issuer),
            &crate::config::ScopeConfig::default().implies,
        )
        .expect("verifier");
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

    #[tokio::test]
    async fn honest_token_yields_principal_with_scopes() {
        let (issuer, verifier, config) = setup();
        let p = verifier
            .verify(&mint(&issuer, &config, |_| {}))
            .await
            .expect("valid");
        assert_eq!(p.subject(), "alice");
        assert!(p.has_scope("db:read") && p.has_scope("audit:read") && !p.has_scope("db:write"));
    }

    #[tokio::test]
    async fn scopes_from_scp_and_permissions() {
        let (issuer, verifier, config) = setup();
        let t = mint(&issuer, &config, |c| {
            c.as_object_mut().map(|o| o.remove("scope"));
            c["scp"] = serde_json::json!(["a", "b"]);
            c["permissions"] = serde_json::json!(["c"]);
        });
        let p = verifier.verify(&t).await.expect("valid");
        assert!(p.has_scope("a") && p.has_scope("b") && p.has_scope("c"));
    }

    #[tokio::test]
    async fn attacks_are_rejected() {
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
            assert_eq!(verifier.verify(&token).await.err(), Some(want), "{name}");
        }
    }

    #[tokio::test]
    async fn alg_none_and_tampering_are_rejected() {
        let (issuer, verifier, config) = setup();
        let honest = mint(&issuer, &config, |_| {});
        let parts: Vec<&str> = honest.split('.').collect();
        // alg none, no signature.
        let none_header = B64.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, issuer.kid()));
        let none = format!("{none_header}.{}.", parts[1]);
        assert_eq!(
            verifier.verify(&none).await.err(),
            Some(IdentityError::Malformed)
        );
        // HS256 header on our EdDSA key (key confusion).
        let hs_header = B64.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, issuer.kid()));
        let hs = format!("{hs_header}.{}.{}", parts[1], parts[2]);
        assert_eq!(
            verifier.verify(&hs).await.err(),
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
            verifier.verify(&forged).await.err(),
            Some(IdentityError::BadSignature)
        );
    }

    /// A correctly signed token with exactly this header and payload text.
    fn sign_raw(issuer: &KeyPair, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", B64.encode(header), B64.encode(payload));
        let signature = B64.encode(issuer.sign(input.as_bytes()));
        format!("{input}.{signature}")
    }

    #[tokio::test]
    async fn signed_but_ambiguous_or_unintended_tokens_are_rejected() {
        let (issuer, verifier, config) = setup();
        let now = crate::now_unix();
        let kid = issuer.kid();
        let claims = |extra: &str| {
            format!(
                r#"{{"iss":"{}","aud":"{}","sub":"alice","scope":"db:read","exp":{}{extra}}}"#,
                config.issuer,
                config.audience,
                now + 600
            )
        };
        let header = |extra: &str| format!(r#"{{"alg":"EdDSA","kid":"{kid}"{extra}}}"#);
        let cases = [
            // RFC 7515 4.1.11: an extension we do not implement, even one
            // naming a registered claim, and the forbidden empty list.
            (
                header(r#","crit":["exp"],"exp":1"#),
                claims(""),
                IdentityError::UnsupportedCritical,
            ),
            (
                header(r#","crit":[]"#),
                claims(""),
                IdentityError::UnsupportedCritical,
            ),
            (
                header(r#","b64":false,"crit":["b64"]"#),
                claims(""),
                IdentityError::UnsupportedCritical,
            ),
            // RFC 8725 3.11: a passport or ID token is not an access token.
            (
                header(r#","typ":"passport+jwt""#),
                claims(""),
                IdentityError::WrongType,
            ),
            (header(r#","typ":7"#), claims(""), IdentityError::WrongType),
            // Issued a year from now.
            (
                header(""),
                claims(&format!(r#","iat":{}"#, now + 365 * 86_400)),
                IdentityError::IssuedInFuture,
            ),
            // Repeated members: which `alg` or `sub` is meant is a guess.
            (
                header(r#","alg":"HS256""#),
                claims(""),
                IdentityError::Malformed,
            ),
            (
                header(""),
                claims(r#","sub":"admin""#),
                IdentityError::Malformed,
            ),
            (
                header(""),
                claims(r#","cnf":{"jkt":"a","jkt":"b"}"#),
                IdentityError::Malformed,
            ),
            (
                header(""),
                claims(r#","iat":"yesterday""#),
                IdentityError::Malformed,
            ),
        ];
        for (header, payload, expected) in cases {
            let token = sign_raw(&issuer, &header, &payload);
            assert_eq!(
                verifier.verify(&token).await.err(),
                Some(expected),
                "{header} {payload}"
            );
        }
        for typ in ["JWT", "at+jwt", "application/at+JWT"] {
            let token = sign_raw(
                &issuer,
                &header(&format!(r#","typ":"{typ}""#)),
                &claims(&format!(r#","iat":{now}"#)),
            );
            assert!(verifier.verify(&token).await.is_ok(), "{typ}");
        }
        let segments: Vec<String> = sign_raw(&issuer, &header(""), &claims(""))
            .split('.')
            .map(String::from)
            .collect();
        for malformed in [
            format!("{}.{}.{}.x", segments[0], segments[1], segments[2]),
            format!("{}=.{}.{}", segments[0], segments[1], segments[2]),
            format!("{}.{}", segments[0], segments[1]),
        ] {
            assert_eq!(
                verifier.verify(&malformed).await.err(),
                Some(IdentityError::Malformed),
                "{malformed}"
            );
        }
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_and_tampering_still_fails() {
        let (issuer, verifier, config) = setup();
        let token = mint(&issuer, &config, |_| {});
        let first = verifier.verify(&token).await.expect("verifies");
        let again = verifier.verify(&token).await.expect("remembered");
        assert_eq!(first.subject(), again.subject());
        assert_eq!(first.scopes(), again.scopes());
        // Tampering changes the fingerprint: a full check, which fails.
        let mut bytes = token.clone().into_bytes();
        let at = bytes.len() - 10;
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(verifier.verify(&tampered).await.is_err());
        // An entry is not used past the token's expiry, nor across key sets.
        let fingerprint = [7u8; 32];
        verifier.verified.insert(fingerprint, 3, first.clone());
        assert!(
            verifier
                .verified
                .get(&fingerprint, 3, first.expires_at)
                .is_some()
        );
        assert!(
            verifier
                .verified
                .get(&fingerprint, 3, first.expires_at + 1)
                .is_none()
        );
        verifier.verified.insert(fingerprint, 3, first.clone());
        assert!(verifier.verified.get(&fingerprint, 4, 0).is_none());
        assert!(
            verifier.verified.get(&fingerprint, 3, 0).is_none(),
            "a stale entry is dropped"
        );
    }

    #[test]
    fn scope_hierarchy_is_transitive() {
        let implies = crate::config::ScopeConfig::default().implies;
        let granted: BTreeSet<String> = ["db:admin".to_string()].into();
        let all = expand_scopes(granted, &implies);
        assert!(all.contains("db:write") && all.contains("db:read"));
        assert!(!all.contains("terminal:execute"));
        let cyclic: BTreeMap<String, Vec<String>> = [
            ("a".to_string(), vec!["b".to_string()]),
            ("b".to_string(), vec!["a".to_string()]),
        ]
        .into();
        assert_eq!(expand_scopes(["a".to_string()].into(), &cyclic).len(), 2);
    }
}
