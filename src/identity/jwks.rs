//! Where verification keys come from: JWK Sets (file or URL), PEM public
//! keys, an HS256 secret, and the development issuer.
//!
//! Every key carries the one algorithm it may verify, fixed when the key is
//! loaded: from the key type (RSA → RS256, P-256 → ES256, OKP → EdDSA), or
//! from configuration for PEM keys and the HS256 secret. A JWK's own `alg`
//! must agree or the key is skipped. Symmetric keys found in a JWK Set are
//! ignored: anyone able to read the set could mint tokens with them.
//!
//! A JWKS URL is cached. It is fetched again when the cache is older than
//! `jwks_cache_s`, or when a token names a `kid` the cache does not hold —
//! but never more often than once per `jwks_min_refresh_s`, and by one task
//! at a time (single flight): a flood of tokens with invented `kid`s costs
//! the identity provider at most one request per interval. A failed fetch
//! keeps the keys already held.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// Largest JWK Set body accepted from an identity provider.
const MAX_JWKS_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub kid: Option<String>,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// The algorithm a JWK may verify, or `None` when we do not accept it.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let from_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
        _ => return None,
    };
    let declared = jwk.common.key_algorithm.map(|a| match a {
        KeyAlgorithm::RS256 => Some(Algorithm::RS256),
        KeyAlgorithm::ES256 => Some(Algorithm::ES256),
        KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
        _ => None,
    });
    match declared {
        None => Some(from_type),
        Some(Some(alg)) if alg == from_type => Some(from_type),
        Some(_) => None,
    }
}

/// The usable keys of a JWK Set. Every usable key must have a `kid`.
pub(crate) fn keys_from_set(set: &JwkSet) -> Result<Vec<TrustedKey>, String> {
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let Some(algorithm) = algorithm_of(jwk) else {
            continue;
        };
        let kid = jwk
            .common
            .key_id
            .clone()
            .ok_or_else(|| "every signing key needs a `kid`".to_string())?;
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {kid}: {e}"))?;
        keys.push(TrustedKey {
            kid: Some(kid),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

pub(crate) fn parse_set(bytes: &[u8]) -> Result<Vec<TrustedKey>, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
    keys_from_set(&set)
}

/// A PEM public key with its configured algorithm.
pub(crate) fn key_from_pem(
    kid: Option<String>,
    alg: &str,
    pem: &[u8],
) -> Result<TrustedKey, String> {
    let (algorithm, key) = match alg {
        "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
        "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
        "EdDSA" => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem)),
        other => {
            return Err(format!(
                "unsupported algorithm {other}: use RS256, ES256 or EdDSA"
            ));
        }
    };
    Ok(TrustedKey {
        kid,
        algorithm,
        key: key.map_err(|e| format!("not a {alg} public key in PEM: {e}"))?,
    })
}

struct Snapshot {
    keys: Vec<TrustedKey>,
    /// When the keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last started, successful or not.
    attempted_at: Option<Instant>,
    /// Bumped by every fetch attempt, so tasks that waited for one see it.
    generation: u64,
}

impl Snapshot {
    fn find(&self, kid: Option<&str>) -> Option<TrustedKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
        .cloned()
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct JwksCounters {
    pub fetched: AtomicU64,
    pub failed: AtomicU64,
}

/// A JWK Set fetched from the identity provider and cached.
pub(crate) struct RemoteJwks {
    url: String,
    client: reqwest::Client,
    max_age: Duration,
    min_interval: Duration,
    snapshot: std::sync::RwLock<Arc<Snapshot>>,
    refresh: tokio::sync::Mutex<()>,
    pub counters: JwksCounters,
}

impl RemoteJwks {
    pub fn new(
        url: String,
        max_age: Duration,
        min_interval: Duration,
        timeout: Duration,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dualtrust/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            client,
            max_age,
            min_interval,
            snapshot: std::sync::RwLock::new(Arc::new(Snapshot {
                keys: Vec::new(),
                fetched_at: None,
                attempted_at: None,
                generation: 0,
            })),
            refresh: tokio::sync::Mutex::new(()),
            counters: JwksCounters::default(),
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        match self.snapshot.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether keys have ever been loaded (for `/readyz`).
    pub fn loaded(&self) -> bool {
        self.current().fetched_at.is_some()
    }

    /// The key for `kid`, refreshing the cache when it is stale or lacks it.
    pub async fn find(&self, kid: Option<&str>) -> Option<TrustedKey> {
        let snapshot = self.current();
        let fresh = snapshot
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age);
        if fresh && let Some(key) = snapshot.find(kid) {
            return Some(key);
        }
        self.refresh(snapshot.generation).await;
        self.current().find(kid)
    }

    /// Fetches the set unless another task did since `seen_generation` or
    /// the last attempt is more recent than the minimum interval.
    pub async fn refresh(&self, seen_generation: u64) {
        let _single_flight = self.refresh.lock().await;
        let snapshot = self.current();
        if snapshot.generation != seen_generation {
            return;
        }
        if snapshot
            .attempted_at
            .is_some_and(|at| at.elapsed() < self.min_interval)
        {
            return;
        }
        let attempted_at = Some(Instant::now());
        let next = match self.fetch().await {
            Ok(keys) => {
                self.counters.fetched.fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %self.url, keys = keys.len(), "fetched the identity provider's JWKS");
                Snapshot {
                    keys,
                    fetched_at: attempted_at,
                    attempted_at,
                    generation: snapshot.generation + 1,
                }
            }
            Err(message) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.url, error = %message, "could not fetch the identity provider's JWKS; keeping the keys held");
                Snapshot {
                    keys: snapshot.keys.clone(),
                    fetched_at: snapshot.fetched_at,
                    attempted_at,
                    generation: snapshot.generation + 1,
                }
            }
        };
        let next = Arc::new(next);
        match self.snapshot.write() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
    }

    /// The first load at start-up.
    pub async fn prime(&self) {
        self.refresh(self.current().generation).await;
    }

    async fn fetch(&self) -> Result<Vec<TrustedKey>, String> {
        let mut response = self
            .client
            .get(&self.url)
            .header(
                reqwest::header::ACCEPT,
                "application/jwk-set+json, application/json",
            )
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("HTTP status {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading the body failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWK Set is larger than {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let keys = parse_set(&body)?;
        if keys.is_empty() {
            return Err("the JWK Set holds no usable signing key".into());
        }
        Ok(keys)
    }
}
