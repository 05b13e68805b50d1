//! A local identity provider for the tests: signing keys (RSA, EC,
//! Ed25519), a JWKS endpoint that counts its requests and can be rotated or
//! taken down, and an OAuth 2.1 authorization server for the inbox's
//! sign-in (authorization code with PKCE S256; it signs in whoever
//! `sign_in_as` names, without asking, and checks everything else).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::common::DataDir;

pub const ISSUER: &str = "https://idp.test";
pub const AUDIENCE: &str = "https://dualtrust.test/mcp";

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/idp/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
    jwk: Value,
}

/// A local identity provider: signing keys, and a JWKS endpoint that counts
/// its requests and can be rotated.
pub struct Idp {
    pub base: String,
    keys: HashMap<&'static str, SigningKey>,
    published: Arc<Mutex<Vec<&'static str>>>,
    hits: Arc<AtomicUsize>,
    /// While false the JWKS endpoint answers 503.
    up: Arc<std::sync::atomic::AtomicBool>,
    oauth: Arc<OAuth>,
}

/// The OAuth client the inbox is registered as.
pub const INBOX_CLIENT_ID: &str = "dualtrust-inbox";

/// The authorization server's state: who signs in, where it may redirect,
/// the codes issued and not yet redeemed.
#[derive(Default)]
struct OAuth {
    user: Mutex<Option<String>>,
    redirect_uri: Mutex<Option<String>>,
    /// code -> (PKCE challenge, redirect URI, subject)
    codes: Mutex<HashMap<String, (String, String, String)>>,
    token_requests: AtomicUsize,
}

fn pairs(query: &str) -> HashMap<String, String> {
    reqwest::Url::parse(&format!("http://q/?{query}"))
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

impl OAuth {
    /// `GET /authorize`: signs in `user` at once and redirects back with a
    /// code, if the request is one a conforming client makes.
    fn authorize(&self, query: &str) -> axum::response::Response {
        use axum::response::IntoResponse;
        let q = pairs(query);
        let registered = self.redirect_uri.lock().expect("lock").clone();
        let ok = q.get("response_type").map(String::as_str) == Some("code")
            && q.get("client_id").map(String::as_str) == Some(INBOX_CLIENT_ID)
            && q.contains_key("redirect_uri")
            && q.get("redirect_uri") == registered.as_ref()
            && q.get("code_challenge_method").map(String::as_str) == Some("S256")
            && q.get("code_challenge").is_some_and(|c| c.len() == 43);
        let user = self.user.lock().expect("lock").clone();
        let (Some(redirect), Some(user), true) = (registered, user, ok) else {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "not a valid authorization request",
            )
                .into_response();
        };
        let code = dualtrust::random_id().expect("code");
        self.codes.lock().expect("lock").insert(
            code.clone(),
            (q["code_challenge"].clone(), redirect.clone(), user),
        );
        let mut location = reqwest::Url::parse(&redirect).expect("redirect uri");
        location
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair(
                "state",
                q.get("state").map(String::as_str).unwrap_or_default(),
            );
        (
            axum::http::StatusCode::FOUND,
            [(axum::http::header::LOCATION, location.to_string())],
        )
            .into_response()
    }

    /// `POST /token`: redeems a code once, for the verifier whose S256
    /// challenge it was issued to, answering with CORS for the inbox.
    fn token(
        &self,
        origin: Option<&str>,
        body: &str,
        signer: &SigningKey,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        self.token_requests.fetch_add(1, Ordering::SeqCst);
        let f = pairs(body);
        let issued = f
            .get("code")
            .and_then(|c| self.codes.lock().expect("lock").remove(c));
        let valid = issued.as_ref().is_some_and(|(challenge, redirect, _)| {
            use sha2::Digest;
            let verifier = f.get("code_verifier").cloned().unwrap_or_default();
            f.get("grant_type").map(String::as_str) == Some("authorization_code")
                && f.get("client_id").map(String::as_str) == Some(INBOX_CLIENT_ID)
                && f.get("redirect_uri") == Some(redirect)
                && B64.encode(sha2::Sha256::digest(verifier.as_bytes())) == *challenge
        });
        let allow = self
            .redirect_uri
            .lock()
            .expect("lock")
            .as_deref()
            .and_then(|r| reqwest::Url::parse(r).ok())
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| Some(o.as_str()) == origin)
            .unwrap_or_default();
        let cors = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, allow)];
        match issued {
            Some((_, _, subject)) if valid => {
                let mut header = Header::new(signer.algorithm);
                header.kid = Some("ec-1".into());
                let token = jsonwebtoken::encode(
                    &header,
                    &Idp::claims(&subject, "approvals:write"),
                    &signer.key,
                )
                .expect("sign");
                (
                    cors,
                    axum::Json(
                        json!({ "access_token": token, "token_type": "Bearer", "expires_in": 600 }),
                    ),
                )
                    .into_response()
            }
            _ => (
                axum::http::StatusCode::BAD_REQUEST,
                cors,
                axum::Json(json!({ "error": "invalid_grant" })),
            )
                .into_response(),
        }
    }
}

impl Idp {
    pub async fn start(published: &[&'static str]) -> Self {
        let mut keys = HashMap::new();
        for (kid, file, algorithm) in [
            ("rsa-1", "rsa1.pem", Algorithm::RS256),
            ("rsa-2", "rsa2.pem", Algorithm::RS256),
            ("ec-1", "ec.pem", Algorithm::ES256),
            ("ed-1", "ed25519.pem", Algorithm::EdDSA),
        ] {
            let pem = fixture(file);
            let key = match algorithm {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
                Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
                _ => EncodingKey::from_ed_pem(&pem),
            }
            .expect("fixture key");
            let mut jwk = Jwk::from_encoding_key(&key, algorithm).expect("jwk");
            jwk.common.key_id = Some(kid.to_string());
            let jwk = serde_json::to_value(jwk).expect("jwk json");
            keys.insert(
                kid,
                SigningKey {
                    algorithm,
                    key,
                    jwk,
                },
            );
        }
        let published = Arc::new(Mutex::new(published.to_vec()));
        let hits = Arc::new(AtomicUsize::new(0));
        let set: HashMap<&'static str, Value> =
            keys.iter().map(|(k, v)| (*k, v.jwk.clone())).collect();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (serve_published, serve_hits, serve_up) = (published.clone(), hits.clone(), up.clone());
        let oauth = Arc::new(OAuth::default());
        let (authorize_oauth, token_oauth) = (oauth.clone(), oauth.clone());
        let token_signer = Arc::new(SigningKey {
            algorithm: Algorithm::ES256,
            key: keys["ec-1"].key.clone(),
            jwk: Value::Null,
        });
        let app = axum::Router::new()
            .route(
                "/authorize",
                axum::routing::get(move |uri: axum::http::Uri| {
                    let oauth = authorize_oauth.clone();
                    async move { oauth.authorize(uri.query().unwrap_or_default()) }
                }),
            )
            .route(
                "/token",
                axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                    let (oauth, signer) = (token_oauth.clone(), token_signer.clone());
                    async move {
                        let origin = headers
                            .get(axum::http::header::ORIGIN)
                            .and_then(|v| v.to_str().ok());
                        oauth.token(origin, &body, &signer)
                    }
                }),
            )
            .route(
                "/jwks",
                axum::routing::get(move || {
                    let published = serve_published.clone();
                    let hits = serve_hits.clone();
                    let set = set.clone();
                    let up = serve_up.load(Ordering::SeqCst);
                    async move {
                        use axum::response::IntoResponse;
                        hits.fetch_add(1, Ordering::SeqCst);
                        if !up {
                            return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
                        }
                        let kids = published.lock().expect("lock").clone();
                        let keys: Vec<Value> = kids.iter().map(|k| set[k].clone()).collect();
                        axum::Json(json!({ "keys": keys })).into_response()
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base,
            keys,
            published,
            hits,
            up,
            oauth,
        }
    }

    /// Who the authorization server signs in, and the one redirect URI it
    /// accepts (the inbox's).
    pub fn sign_in_as(&self, subject: &str, redirect_uri: &str) {
        *self.oauth.user.lock().expect("lock") = Some(subject.to_string());
        *self.oauth.redirect_uri.lock().expect("lock") = Some(redirect_uri.to_string());
    }

    /// Codes redeemed (or tried) at the token endpoint.
    pub fn token_requests(&self) -> usize {
        self.oauth.token_requests.load(Ordering::SeqCst)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn publish(&self, kids: &[&'static str]) {
        *self.published.lock().expect("lock") = kids.to_vec();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn claims(sub: &str, scope: &str) -> Value {
        let now = dualtrust::now_unix();
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope,
            "iat": now, "exp": now + 600,
            "jti": dualtrust::random_id().expect("id"),
        })
    }

    /// A token signed with `kid`, its claims edited by `edit`.
    pub fn mint(&self, kid: &str, scope: &str, edit: impl FnOnce(&mut Value)) -> String {
        let signer = &self.keys[kid];
        let mut claims = Self::claims("agent-7", scope);
        edit(&mut claims);
        let mut header = Header::new(signer.algorithm);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, &claims, &signer.key).expect("sign")
    }

    /// Configures `data` to trust this IdP's JWKS URL.
    pub fn configure(&self, data: &DataDir, extra: &str) {
        let text = format!(
            "[identity]\ndev_tokens = false\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\njwks_url = \"{}/jwks\"\n{extra}",
            self.base
        );
        std::fs::write(data.path.join("dualtrust.toml"), text).expect("config");
    }
}
