//! Ed25519 signing keys: the server key (receipts, passports) and the
//! development token-issuer key.
//!
//! Keys are stored as a hex-encoded 32-byte seed in a file readable only by
//! its owner. Public keys are published as RFC 7517 JWKs (`kty: OKP`,
//! `crv: Ed25519`, RFC 8037) whose `kid` is the RFC 7638 thumbprint, so any
//! JOSE library can verify what we sign.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::Serialize;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The key file exists but does not hold a 32-byte hex seed.
    #[error("key file {path} is not a 64-character hex Ed25519 seed")]
    Malformed { path: String },
    /// The key file is missing and creating keys is not allowed (production).
    #[error("key file {path} is missing; run `dualtrust keygen` or configure an existing key")]
    Missing { path: String },
    /// The operating system's random source failed.
    #[error("random source unavailable")]
    Random,
    /// HKDF refused to expand (only possible for outputs past 8160 bytes).
    #[error("cannot derive a secret from the key")]
    Derive,
    /// A JSON value could not be serialized for signing.
    #[error("cannot serialize signed payload")]
    Serialize,
}

/// HKDF salt of [`KeyPair::derive_secret`]: names the scheme, so a future
/// one derives unrelated secrets from the same key.
const DERIVE_SALT: &[u8] = b"dualtrust-derive-v1";

/// An Ed25519 key pair. No `Debug`, no `Clone`: the secret half leaves this
/// type only as a signature. The seed is zeroized on drop by ed25519-dalek.
pub struct KeyPair {
    secret: SigningKey,
    kid: String,
}

impl KeyPair {
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut()).map_err(|_| KeyError::Random)?;
        Ok(Self::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let secret = SigningKey::from_bytes(seed);
        let kid = jwk_thumbprint(&secret.verifying_key());
        Self { secret, kid }
    }

    /// Loads the key at `path`; when it is missing and `create` is true,
    /// generates one and writes it with mode 0600. Returns whether it was created.
    pub fn load_or_create(path: &Path, create: bool) -> Result<(Self, bool), KeyError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let seed =
                    Zeroizing::new(hex::decode(text.trim()).map_err(|_| KeyError::Malformed {
                        path: shown.clone(),
                    })?);
                let seed: &[u8; 32] = seed
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyError::Malformed { path: shown })?;
                Ok((Self::from_seed(seed), false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(KeyError::Missing { path: shown });
                }
                let pair = Self::generate()?;
                pair.write_secret(path)?;
                Ok((pair, true))
            }
            Err(source) => Err(KeyError::Io {
                path: shown,
                source,
            }),
        }
    }

    fn write_secret(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let encoded = Zeroizing::new(hex::encode(self.secret.to_bytes()));
        file.write_all(encoded.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// A 32-byte secret derived from this key for `label` with HKDF-SHA-256
    /// (RFC 5869: the seed as input keying material, a fixed salt, the label
    /// as info), so replicas sharing the key share derived secrets without
    /// another secret to distribute, and no derived secret reveals the key.
    pub fn derive_secret(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let seed = Zeroizing::new(self.secret.to_bytes());
        let hkdf = hkdf::Hkdf::<sha2::Sha256>::new(Some(DERIVE_SALT), seed.as_slice());
        let mut secret = Zeroizing::new([0u8; 32]);
        hkdf.expand(label.as_bytes(), secret.as_mut_slice())
            .map_err(|_| KeyError::Derive)?;
        Ok(secret)
    }

    /// RFC 7638 thumbprint of the public key, used as `kid` everywhere.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.secret.verifying_key()
    }

    pub fn public_jwk(&self) -> serde_json::Value {
        public_jwk(&self.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.secret.sign(message).to_bytes()
    }

    /// RFC 7515 compact JWS with `alg: EdDSA` over the JSON `claims`.
    pub fn sign_jws<C: Serialize>(&self, typ: &str, claims: &C) -> Result<String, KeyError> {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": typ, "kid": self.kid });
        let header = serde_json::to_vec(&header).map_err(|_| KeyError::Serialize)?;
        let payload = serde_json::to_vec(claims).map_err(|_| KeyError::Serialize)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// Parses a base64url (no padding) Ed25519 public key: a JWK's `x`.
pub fn parse_public_key(b64: &str) -> Option<VerifyingKey> {
    let bytes = URL_SAFE_NO_PAD.decode(b64.trim()).ok()?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The public JWK for an Ed25519 key (RFC 8037 section 2).
pub fn public_jwk(key: &VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
        "kid": jwk_thumbprint(key),
        "alg": "EdDSA",
        "use": "sig",
    })
}

/// RFC 7638 section 3: SHA-256 over the required members in lexicographic order.
pub fn jwk_thumbprint(key: &VerifyingKey) -> String {
    use sha2::Digest;
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    );
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()))
}

/// A JWK Set document (RFC 7517 section 5).
pub fn jwks(keys: &[&VerifyingKey]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(|k| public_jwk(k)).collect::<Vec<_>>() })
}

/// Parses the Ed25519 keys out of a JWKS document, keyed by `kid`.
/// Other key types are skipped: only Ed25519 signs dualtrust artifacts.
pub fn ed25519_keys_from_jwks(doc: &serde_json::Value) -> Vec<(String, VerifyingKey)> {
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    keys.iter()
        .filter(|k| k.get("kty").and_then(|v| v.as_str()) == Some("OKP"))
        .filter(|k| k.get("crv").and_then(|v| v.as_str()) == Some("Ed25519"))
        .filter_map(|k| {
            let x = URL_SAFE_NO_PAD.decode(k.get("x")?.as_str()?).ok()?;
            let x: [u8; 32] = x.as_slice().try_into().ok()?;
            let key = VerifyingKey::from_bytes(&x).ok()?;
            Some((jwk_thumbprint(&key), key))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8037_appendix_a_thumbprint() {
        // RFC 8037 appendix A.1 public key and A.3 thumbprint.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .expect("vector decodes");
        let key = VerifyingKey::from_bytes(&x.try_into().expect("32 bytes")).expect("valid key");
        assert_eq!(
            jwk_thumbprint(&key),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn rfc8037_appendix_a4_signature() {
        // RFC 8037 appendix A.4: the JWS over "Example of Ed25519 signing".
        let seed: [u8; 32] = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("vector decodes")
            .try_into()
            .expect("32 bytes");
        let pair = KeyPair::from_seed(&seed);
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        assert_eq!(
            URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn derived_secrets_are_hkdf_sha256_and_differ_by_label() {
        // Computed independently: HMAC-SHA-256 extract with the salt, then
        // one expand block over the label (RFC 5869 section 2).
        let pair = KeyPair::from_seed(&[7u8; 32]);
        let secret = pair
            .derive_secret("dualtrust-request-state-v1")
            .expect("derives");
        assert_eq!(
            hex::encode(secret.as_slice()),
            "5f18cbb56f635fd31f37c42a1707a06413b0c60092d1b85a92436031ea6e5258"
        );
        let other = pair.derive_secret("another-use").expect("derives");
        assert_ne!(secret.as_slice(), other.as_slice());
    }

    #[test]
    fn key_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        let (a, created) = KeyPair::load_or_create(&path, true).expect("create");
        assert!(created);
        let (b, created) = KeyPair::load_or_create(&path, false).expect("load");
        assert!(!created);
        assert_eq!(a.kid(), b.kid());
        std::fs::write(&path, "zz").expect("write");
        assert!(matches!(
            KeyPair::load_or_create(&path, false),
            Err(KeyError::Malformed { .. })
        ));
        assert!(matches!(
            KeyPair::load_or_create(&dir.path().join("none"), false),
            Err(KeyError::Missing { .. })
        ));
    }
}
