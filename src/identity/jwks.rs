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

use crate::config::PemAlgorithm;

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
    alg: PemAlgorithm,
    pem: &[u8],
) -> Result<TrustedKey, String> {
    let (algorithm, key) = match alg {
        PemAlgorithm::RS256 => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
        PemAlgorithm::ES256 => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
        PemAlgorithm::EdDSA => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem)),
    };
    Ok(TrustedKey {
        kid,
        algorithm,
        key: key.map_err(|e| format!("not a {} public key in PEM: {e}", alg.as_str()))?,
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

    /// The current key set's generation while it is fresh; `None` once it
    /// is due to be fetched again. Verified tokens are remembered per
    /// generation, so a refetch (which may withdraw a key) forgets them.
    pub fn fresh_generation(&self) -> Option<u64> {
        let snapshot = self.current();
        snapshot
            .fetched_at
            .is_some_and(|at| at.elapsed() < self.max_age)
            .then_some(snapshot.generation)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ed_jwk(kid: &str) -> Value {
        let mut jwk = crate::keys::KeyPair::generate().expect("key").public_jwk();
        jwk["kid"] = json!(kid);
        jwk
    }

    #[test]
    fn only_signing_keys_whose_alg_matches_their_type_are_used() {
        let mut encryption = ed_jwk("enc");
        encryption["use"] = json!("enc");
        let mut mislabelled = ed_jwk("mislabelled");
        mislabelled["alg"] = json!("RS256");
        let mut labelled = ed_jwk("labelled");
        labelled["alg"] = json!("EdDSA");
        let symmetric = json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA" });
        let set =
            json!({ "keys": [ed_jwk("plain"), encryption, mislabelled, labelled, symmetric] });
        let keys = parse_set(set.to_string().as_bytes()).expect("set");
        let kids: Vec<_> = keys.iter().filter_map(|k| k.kid.clone()).collect();
        assert_eq!(kids, ["plain", "labelled"]);
        assert!(keys.iter().all(|k| k.algorithm == Algorithm::EdDSA));
        let mut unnamed = ed_jwk("x");
        unnamed.as_object_mut().map(|o| o.remove("kid"));
        assert!(parse_set(json!({ "keys": [unnamed] }).to_string().as_bytes()).is_err());
    }

    /// Serves `body` with `status` at /jwks; a 302 points at /elsewhere,
    /// which serves a valid set, so following it would load keys.
    async fn serve(status: u16, body: String) -> String {
        let valid = json!({ "keys": [ed_jwk("redirected")] }).to_string();
        let app = axum::Router::new()
            .route(
                "/elsewhere",
                axum::routing::get(move || {
                    let valid = valid.clone();
                    async move { valid }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let body = body.clone();
                    async move {
                        let mut response = axum::response::IntoResponse::into_response(body);
                        *response.status_mut() =
                            axum::http::StatusCode::from_u16(status).expect("status");
                        if status == 302 {
                            response.headers_mut().insert(
                                axum::http::header::LOCATION,
                                axum::http::HeaderValue::from_static("/elsewhere"),
                            );
                        }
                        response
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/jwks", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn remote(url: String) -> RemoteJwks {
        RemoteJwks::new(
            url,
            Duration::from_secs(300),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .expect("client")
    }

    #[tokio::test]
    async fn bad_responses_load_nothing_and_refreshes_are_rate_bounded() {
        let good = json!({ "keys": [ed_jwk("k1")] }).to_string();
        // Valid but over the cap: only the cap stops it loading.
        let huge = json!({ "keys": [ed_jwk("k1")], "pad": "x".repeat(MAX_JWKS_BYTES) }).to_string();
        for (status, body) in [
            (500, good.clone()),
            (302, good.clone()),
            (200, huge),
            (200, "not json".to_string()),
            (200, json!({ "keys": [] }).to_string()),
        ] {
            let jwks = remote(serve(status, body).await);
            jwks.prime().await;
            assert!(!jwks.loaded(), "status {status} loaded keys");
            assert_eq!(jwks.counters.failed.load(Ordering::Relaxed), 1);
        }
        let jwks = remote(serve(200, good).await);
        jwks.prime().await;
        assert!(jwks.loaded());
        assert!(jwks.find(Some("k1")).await.is_some());
        // An unknown kid inside the minimum interval fetches nothing.
        assert!(jwks.find(Some("other")).await.is_none());
        assert_eq!(jwks.counters.fetched.load(Ordering::Relaxed), 1);
    }
}
