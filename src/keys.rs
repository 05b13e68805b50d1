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
    /// The key file exists but holds no 32-byte hex seed or PKCS#8 key.
    #[error(
        "key file {path} holds no Ed25519 key (64-character hex seeds, one per line, or PKCS#8 PEM)"
    )]
    Malformed { path: String },
    /// Group or others may read or write the key file.
    #[error(
        "key file {path} has mode {mode:03o}; a signing key must be readable by its owner only (chmod 600)"
    )]
    Exposed { path: String, mode: u32 },
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

    /// Loads the key at `path` (the first, if it holds several); when it is
    /// missing and `create` is true, generates one and writes it with mode
    /// 0600. Returns whether it was created.
    pub fn load_or_create(path: &Path, create: bool) -> Result<(Self, bool), KeyError> {
        let shown = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                let first = parse_keys(&text, &shown)?.into_iter().next();
                Ok((first.ok_or(KeyError::Malformed { path: shown })?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !create {
                    return Err(KeyError::Missing { path: shown });
                }
                let pair = Self::generate()?;
                write_keys(path, &[&pair], false)?;
                Ok((pair, true))
            }
            Err(source) => Err(KeyError::Io {
                path: shown,
                source,
            }),
        }
    }

    /// The seed as the key file writes it.
    fn seed_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.secret.to_bytes()))
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

/// Reads key text: PKCS#8 PEM blocks (RFC 8410, `BEGIN PRIVATE KEY`), or
/// one 64-character hex seed per line (blank lines and `#` comments
/// skipped). `shown` names the source in errors; the text never appears.
pub fn parse_keys(text: &str, shown: &str) -> Result<Vec<KeyPair>, KeyError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    const BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
    const END: &str = "-----END PRIVATE KEY-----";
    let malformed = || KeyError::Malformed {
        path: shown.to_string(),
    };
    let mut keys = Vec::new();
    if text.contains(BEGIN) {
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let end = rest[start..].find(END).ok_or_else(malformed)? + start + END.len();
            let secret = SigningKey::from_pkcs8_pem(&rest[start..end]).map_err(|_| malformed())?;
            keys.push(KeyPair::from_seed(&secret.to_bytes()));
            rest = &rest[end..];
        }
    } else {
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let seed = Zeroizing::new(hex::decode(line).map_err(|_| malformed())?);
            let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| malformed())?;
            keys.push(KeyPair::from_seed(seed));
        }
    }
    if keys.is_empty() {
        return Err(malformed());
    }
    Ok(keys)
}

/// Writes `keys` to `path`, one hex seed per line, mode 0600: a new file,
/// or (`replace`) atomically in place of the old one through a rename, so
/// a reader sees the old keys or the new, never half.
pub fn write_keys(path: &Path, keys: &[&KeyPair], replace: bool) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let target = if replace {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".next");
        path.with_file_name(name)
    } else {
        path.to_path_buf()
    };
    if replace {
        // A leftover from an interrupted rotation holds no key anyone uses.
        let _ = std::fs::remove_file(&target);
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&target)
        .map_err(io)?;
    for key in keys {
        file.write_all(key.seed_hex().as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    if replace {
        std::fs::rename(&target, path).map_err(io)?;
    }
    Ok(())
}

/// Refuses a key file that anyone but its owner may read or write: a
/// signing key another account can copy is not this server's any more.
pub fn check_private_mode(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| KeyError::Io {
            path: path.display().to_string(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.display().to_string(),
            mode: mode & 0o777,
        });
    }
    Ok(())
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

/// A server public key with where it may sign: the receipts and
/// checkpoints of a span of the log, and the passports of a span of time.
/// A key retired at log size `until_seq` signs nothing past it, so a
/// retired key that leaks cannot sign a receipt or checkpoint that verifies
/// after its retirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedKey {
    pub kid: String,
    pub key: VerifyingKey,
    /// The first receipt it signs (and the smallest checkpoint size).
    pub from_seq: u64,
    /// Retired: receipts below it, checkpoints up to and including it.
    pub until_seq: Option<u64>,
    /// The log's RFC 6962 root at `until_seq`: what it signed is fixed.
    pub until_root: Option<[u8; 32]>,
    /// Unix seconds it became active (0: not recorded).
    pub not_before: u64,
    /// Unix seconds it was retired.
    pub not_after: Option<u64>,
}

impl PublishedKey {
    /// A key with no recorded span (a JWKS from before rotation, a test).
    pub fn unbounded(key: VerifyingKey) -> Self {
        Self {
            kid: jwk_thumbprint(&key),
            key,
            from_seq: 0,
            until_seq: None,
            until_root: None,
            not_before: 0,
            not_after: None,
        }
    }

    pub fn signs_receipt(&self, seq: u64) -> bool {
        seq >= self.from_seq && self.until_seq.is_none_or(|until| seq < until)
    }

    /// Whether a checkpoint of `size` with `root` lies in this key's span:
    /// at its retirement size, only the root it was retired at.
    pub fn signs_checkpoint(&self, size: u64, root: &[u8; 32]) -> bool {
        size >= self.from_seq
            && self.until_seq.is_none_or(|until| {
                size < until || (size == until && self.until_root.as_ref() == Some(root))
            })
    }

    /// Retired: it signs nothing new, and what it signed is bounded.
    pub fn is_retired(&self) -> bool {
        self.until_seq.is_some() || self.not_after.is_some()
    }

    /// Whether a passport issued at `iat` (unix seconds) is in this key's
    /// time: a retired key's passports all end by retirement plus the
    /// longest lifetime, whatever `iat` a leaked key writes.
    pub fn signs_at(&self, iat: u64) -> bool {
        match self.not_after {
            Some(retired) => iat <= retired,
            // Retired without a recorded time: no passport is in its time.
            None => self.until_seq.is_none(),
        }
    }

    /// The JWK (RFC 8037) with the span as extra members (RFC 7517 section
    /// 4 lets a JWK carry them): `nbf`/`exp` in unix seconds, `log_from`,
    /// `log_until` and `log_until_root` in log positions.
    pub fn jwk(&self) -> serde_json::Value {
        let mut jwk = public_jwk(&self.key);
        let members = jwk.as_object_mut();
        if let Some(members) = members {
            members.insert("nbf".into(), self.not_before.into());
            members.insert("log_from".into(), self.from_seq.into());
            if let Some(retired) = self.not_after {
                members.insert("exp".into(), retired.into());
            }
            if let Some(until) = self.until_seq {
                members.insert("log_until".into(), until.into());
            }
            if let Some(root) = self.until_root {
                members.insert("log_until_root".into(), hex::encode(root).into());
            }
        }
        jwk
    }

    /// Reads a JWK this server publishes; a span member that is present
    /// but malformed refuses the key rather than widening it.
    pub fn from_jwk(jwk: &serde_json::Value) -> Option<Self> {
        if jwk.get("kty").and_then(|v| v.as_str()) != Some("OKP")
            || jwk.get("crv").and_then(|v| v.as_str()) != Some("Ed25519")
        {
            return None;
        }
        let key = parse_public_key(jwk.get("x")?.as_str()?)?;
        let number = |name: &str| match jwk.get(name) {
            None => Some(None),
            Some(v) => v.as_u64().map(Some),
        };
        let until_root = match jwk.get("log_until_root") {
            None => None,
            Some(v) => Some(
                hex::decode(v.as_str()?)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())?,
            ),
        };
        let until_seq = number("log_until")?;
        // A retired key without the root it was retired at would leave what
        // it signed unbounded: refused, not widened.
        if until_seq.is_some() != until_root.is_some() {
            return None;
        }
        Some(Self {
            kid: jwk_thumbprint(&key),
            key,
            from_seq: number("log_from")?.unwrap_or(0),
            until_seq,
            until_root,
            not_before: number("nbf")?.unwrap_or(0),
            not_after: number("exp")?,
        })
    }
}

/// The JWK Set of published keys, with their spans.
pub fn published_jwks(keys: &[PublishedKey]) -> serde_json::Value {
    serde_json::json!({ "keys": keys.iter().map(PublishedKey::jwk).collect::<Vec<_>>() })
}

/// Parses the Ed25519 keys out of a JWKS document, with the spans this
/// server publishes. Other key types are skipped: only Ed25519 signs
/// dualtrust artifacts.
pub fn published_keys_from_jwks(doc: &serde_json::Value) -> Vec<PublishedKey> {
    let Some(keys) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Vec::new();
    };
    keys.iter().filter_map(PublishedKey::from_jwk).collect()
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
