//! WebAuthn verification for approvers' passkeys: the registration
//! ceremony (a new credential's public key) and the assertion that signs
//! one approval statement.
//!
//! Built from kept building blocks rather than `webauthn-rs`: its surface
//! draws every challenge at random and keeps it as server state, while an
//! approval's challenge must be *derived from the statement* so that the
//! signature covers the exact call and an auditor can re-check it offline
//! (and `webauthn-rs-core` brings OpenSSL). CBOR and COSE are parsed by
//! `coset` (and the `ciborium` it re-exports), ES256 is verified by `p256`
//! and EdDSA by `ed25519-dalek`; what is left here is the W3C WebAuthn
//! Level 3 procedure itself (sections 7.1 and 7.2), step by step.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use coset::cbor::value::Value;
use coset::iana::{self, EnumI64};
use coset::{AsCborValue, CborSerializable, CoseKey, KeyType, Label};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// COSE algorithm identifiers accepted for credentials (RFC 9053).
pub const ES256: i64 = -7;
pub const EDDSA: i64 = -8;

/// Authenticator data flags (WebAuthn section 6.1).
const USER_PRESENT: u8 = 0x01;
const USER_VERIFIED: u8 = 0x04;
const BACKUP_ELIGIBLE: u8 = 0x08;
const BACKED_UP: u8 = 0x10;
const ATTESTED_CREDENTIAL: u8 = 0x40;
const EXTENSIONS: u8 = 0x80;

/// Longest credential id WebAuthn allows (section 5.8.3).
const MAX_CREDENTIAL_ID: usize = 1023;
/// Bounds on what a client may hand us, far above any real authenticator's.
const MAX_CLIENT_DATA: usize = 4096;
const MAX_AUTHENTICATOR_DATA: usize = 4096;
const MAX_ATTESTATION_OBJECT: usize = 16 * 1024;

/// The relying party: this deployment's RP id and the page origins a
/// ceremony may come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelyingParty {
    pub id: String,
    /// `scheme://host[:port]`, or `…:*` for any port (as
    /// `http.allowed_origins`).
    pub origins: Vec<String>,
}

/// The embedded default: the inbox on a loopback port, opened as `localhost`
/// (WebAuthn takes no IP address as an RP id).
impl Default for RelyingParty {
    fn default() -> Self {
        Self {
            id: "localhost".into(),
            origins: vec!["http://localhost:*".into()],
        }
    }
}

impl RelyingParty {
    fn admits_origin(&self, origin: &str) -> bool {
        crate::origin_matches(&self.origins, origin)
    }

    fn id_hash(&self) -> [u8; 32] {
        Sha256::digest(self.id.as_bytes()).into()
    }
}

/// Why a ceremony does not verify. `Display` is safe to show the submitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebauthnError {
    #[error("the {0} is not valid base64url or not well formed")]
    Malformed(&'static str),
    #[error("the client data is for another ceremony type")]
    WrongType,
    #[error("the challenge signed is not the one for this statement")]
    ChallengeMismatch,
    #[error("the ceremony ran on a page whose origin is not allowed")]
    OriginNotAllowed,
    #[error("the ceremony ran in a cross-origin frame")]
    CrossOrigin,
    #[error("the authenticator data is for another relying party id")]
    RpIdMismatch,
    #[error("the authenticator did not report user presence")]
    UserNotPresent,
    #[error("the authenticator did not verify the user (PIN or biometric)")]
    UserNotVerified,
    #[error("the credential uses an algorithm other than ES256 or EdDSA")]
    UnsupportedAlgorithm,
    #[error("only the `none` attestation format is accepted")]
    UnsupportedAttestation,
    #[error("the assertion signature does not verify with the credential's key")]
    BadSignature,
    #[error("the signature counter went backwards: the credential may be cloned")]
    CounterRegressed,
}

impl WebauthnError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed(_) => "passkey_malformed",
            Self::WrongType => "passkey_wrong_type",
            Self::ChallengeMismatch => "passkey_challenge_mismatch",
            Self::OriginNotAllowed => "passkey_origin_not_allowed",
            Self::CrossOrigin => "passkey_cross_origin",
            Self::RpIdMismatch => "passkey_rp_id_mismatch",
            Self::UserNotPresent => "passkey_user_not_present",
            Self::UserNotVerified => "passkey_user_not_verified",
            Self::UnsupportedAlgorithm => "passkey_unsupported_algorithm",
            Self::UnsupportedAttestation => "passkey_unsupported_attestation",
            Self::BadSignature => "passkey_bad_signature",
            Self::CounterRegressed => "passkey_counter_regressed",
        }
    }
}

/// The challenge a passkey signs for an approval or rejection statement:
/// SHA-256 of the statement's bytes. The statement's first line is its
/// domain (`dualtrust-approval-v1`, `dualtrust-rejection-v1`), and
/// WebAuthn's own client data (`type: webauthn.get`) keeps the signature
/// from standing for anything outside a WebAuthn assertion.
pub fn statement_challenge(statement: &str) -> [u8; 32] {
    Sha256::digest(statement.as_bytes()).into()
}

/// A credential's public key, from its COSE_Key encoding.
#[derive(Debug, Clone)]
pub struct CredentialKey {
    key: KeyKind,
    cose: Vec<u8>,
}

#[derive(Debug, Clone)]
enum KeyKind {
    Es256(p256::ecdsa::VerifyingKey),
    EdDsa(ed25519_dalek::VerifyingKey),
}

impl CredentialKey {
    /// Parses a COSE_Key (RFC 9052 section 7): an EC2 P-256 key for ES256
    /// or an OKP Ed25519 key for EdDSA; anything else is refused.
    pub fn from_cose(bytes: &[u8]) -> Result<Self, WebauthnError> {
        let key = CoseKey::from_slice(bytes).map_err(|_| WebauthnError::Malformed("COSE key"))?;
        Self::from_key(key, bytes.to_vec())
    }

    /// Parses the base64url of a COSE_Key, as configured and published.
    pub fn from_cose_b64(text: &str) -> Result<Self, WebauthnError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| WebauthnError::Malformed("COSE key"))?;
        Self::from_cose(&bytes)
    }

    fn from_key(key: CoseKey, cose: Vec<u8>) -> Result<Self, WebauthnError> {
        let param = |label: i64| {
            key.params
                .iter()
                .find(|(l, _)| *l == Label::Int(label))
                .map(|(_, v)| v)
        };
        let bytes_param = |label: i64| match param(label) {
            Some(Value::Bytes(b)) => Some(b.as_slice()),
            _ => None,
        };
        let curve = match param(iana::Ec2KeyParameter::Crv.to_i64()) {
            Some(Value::Integer(i)) => i64::try_from(*i).ok(),
            _ => None,
        };
        // A credential public key names its algorithm (section 6.5.1.1).
        let alg = match &key.alg {
            Some(coset::Algorithm::Assigned(a)) => a.to_i64(),
            _ => return Err(WebauthnError::UnsupportedAlgorithm),
        };
        let kind = match key.kty {
            KeyType::Assigned(iana::KeyType::EC2)
                if curve == Some(iana::EllipticCurve::P_256.to_i64()) && alg == ES256 =>
            {
                let x = bytes_param(iana::Ec2KeyParameter::X.to_i64());
                let y = bytes_param(iana::Ec2KeyParameter::Y.to_i64());
                let (Some(x), Some(y)) = (x, y) else {
                    return Err(WebauthnError::Malformed("COSE key"));
                };
                if x.len() != 32 || y.len() != 32 {
                    return Err(WebauthnError::Malformed("COSE key"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(x);
                point.extend_from_slice(y);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| WebauthnError::Malformed("COSE key"))?;
                KeyKind::Es256(key)
            }
            KeyType::Assigned(iana::KeyType::OKP)
                if curve == Some(iana::EllipticCurve::Ed25519.to_i64()) && alg == EDDSA =>
            {
                let x = bytes_param(iana::OkpKeyParameter::X.to_i64())
                    .and_then(|x| <[u8; 32]>::try_from(x).ok())
                    .ok_or(WebauthnError::Malformed("COSE key"))?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| WebauthnError::Malformed("COSE key"))?;
                KeyKind::EdDsa(key)
            }
            _ => return Err(WebauthnError::UnsupportedAlgorithm),
        };
        Ok(Self { key: kind, cose })
    }

    /// The COSE_Key bytes as registered, which is what is published.
    pub fn cose(&self) -> &[u8] {
        &self.cose
    }

    pub fn cose_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.cose)
    }

    /// The COSE algorithm: [`ES256`] or [`EDDSA`].
    pub fn alg(&self) -> i64 {
        match self.key {
            KeyKind::Es256(_) => ES256,
            KeyKind::EdDsa(_) => EDDSA,
        }
    }

    fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), WebauthnError> {
        match &self.key {
            KeyKind::Es256(key) => {
                use p256::ecdsa::signature::Verifier;
                // WebAuthn ES256 signatures are ASN.1 DER (section 6.5.6).
                let signature = p256::ecdsa::Signature::from_der(signature)
                    .map_err(|_| WebauthnError::BadSignature)?;
                key.verify(message, &signature)
                    .map_err(|_| WebauthnError::BadSignature)
            }
            KeyKind::EdDsa(key) => {
                let signature =
                    <[u8; 64]>::try_from(signature).map_err(|_| WebauthnError::BadSignature)?;
                key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature))
                    .map_err(|_| WebauthnError::BadSignature)
            }
        }
    }
}

/// The parts of authenticator data a relying party checks.
struct AuthenticatorData {
    rp_id_hash: [u8; 32],
    flags: u8,
    sign_count: u32,
    /// Present in a registration: the new credential's id and key.
    attested: Option<(Vec<u8>, CredentialKey)>,
}

impl AuthenticatorData {
    /// Parses authenticator data (WebAuthn section 6.1): nothing may follow
    /// the attested credential and the extensions the flags announce.
    fn parse(bytes: &[u8]) -> Result<Self, WebauthnError> {
        const BAD: WebauthnError = WebauthnError::Malformed("authenticator data");
        if bytes.len() < 37 || bytes.len() > MAX_AUTHENTICATOR_DATA {
            return Err(BAD);
        }
        let (head, mut rest) = bytes.split_at(37);
        let mut rp_id_hash = [0u8; 32];
        rp_id_hash.copy_from_slice(&head[..32]);
        let flags = head[32];
        // Backed up implies backup eligible (section 6.1).
        if flags & BACKED_UP != 0 && flags & BACKUP_ELIGIBLE == 0 {
            return Err(BAD);
        }
        let sign_count = u32::from_be_bytes([head[33], head[34], head[35], head[36]]);
        let attested = if flags & ATTESTED_CREDENTIAL != 0 {
            // AAGUID (16), credential id length (2), id, then one COSE_Key.
            if rest.len() < 18 {
                return Err(BAD);
            }
            let id_len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
            rest = &rest[18..];
            if id_len == 0 || id_len > MAX_CREDENTIAL_ID || rest.len() < id_len {
                return Err(BAD);
            }
            let (id, after) = rest.split_at(id_len);
            let mut reader = after;
            let value: Value = coset::cbor::de::from_reader(&mut reader).map_err(|_| BAD)?;
            let used = after.len() - reader.len();
            let key = CoseKey::from_cbor_value(value).map_err(|_| BAD)?;
            let key = CredentialKey::from_key(key, after[..used].to_vec())?;
            rest = reader;
            Some((id.to_vec(), key))
        } else {
            None
        };
        if flags & EXTENSIONS != 0 {
            let mut reader = rest;
            let extensions: Value = coset::cbor::de::from_reader(&mut reader).map_err(|_| BAD)?;
            if !extensions.is_map() {
                return Err(BAD);
            }
            rest = reader;
        }
        if !rest.is_empty() {
            return Err(BAD);
        }
        Ok(Self {
            rp_id_hash,
            flags,
            sign_count,
            attested,
        })
    }

    /// Steps shared by both ceremonies: the RP id, user presence and user
    /// verification, which dualtrust always requires.
    fn check(&self, rp: &RelyingParty) -> Result<(), WebauthnError> {
        if self.rp_id_hash != rp.id_hash() {
            return Err(WebauthnError::RpIdMismatch);
        }
        if self.flags & USER_PRESENT == 0 {
            return Err(WebauthnError::UserNotPresent);
        }
        if self.flags & USER_VERIFIED == 0 {
            return Err(WebauthnError::UserNotVerified);
        }
        Ok(())
    }
}

/// `CollectedClientData` (WebAuthn section 5.8.1); other members are ignored
/// as the specification asks.
#[derive(Deserialize)]
struct ClientData {
    #[serde(rename = "type")]
    kind: String,
    challenge: String,
    origin: String,
    #[serde(default, rename = "crossOrigin")]
    cross_origin: Option<bool>,
    #[serde(default, rename = "topOrigin")]
    top_origin: Option<String>,
}

fn check_client_data(
    rp: &RelyingParty,
    json: &[u8],
    kind: &str,
    challenge: &[u8],
) -> Result<(), WebauthnError> {
    if json.len() > MAX_CLIENT_DATA {
        return Err(WebauthnError::Malformed("client data"));
    }
    let data: ClientData =
        serde_json::from_slice(json).map_err(|_| WebauthnError::Malformed("client data"))?;
    if data.kind != kind {
        return Err(WebauthnError::WrongType);
    }
    let signed = URL_SAFE_NO_PAD
        .decode(&data.challenge)
        .map_err(|_| WebauthnError::Malformed("client data"))?;
    if signed != challenge {
        return Err(WebauthnError::ChallengeMismatch);
    }
    if !rp.admits_origin(&data.origin) {
        return Err(WebauthnError::OriginNotAllowed);
    }
    if data.cross_origin == Some(true) || data.top_origin.is_some() {
        return Err(WebauthnError::CrossOrigin);
    }
    Ok(())
}

/// A newly registered credential, verified.
#[derive(Debug, Clone)]
pub struct Registration {
    pub credential_id: Vec<u8>,
    pub key: CredentialKey,
    pub sign_count: u32,
}

/// What the page posts back from `navigator.credentials.create()`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationResponse {
    /// base64url of `response.clientDataJSON`.
    pub client_data_json: String,
    /// base64url of `response.attestationObject`.
    pub attestation_object: String,
}

/// Verifies a registration ceremony (WebAuthn section 7.1) for `challenge`.
/// Only the `none` attestation format is taken: who owns a credential is
/// decided by the approver's authenticated session and an operator's
/// confirmation, not by a vendor's attestation certificate.
pub fn verify_registration(
    rp: &RelyingParty,
    challenge: &[u8],
    response: &RegistrationResponse,
) -> Result<Registration, WebauthnError> {
    let client_data = decode(&response.client_data_json, "client data")?;
    check_client_data(rp, &client_data, "webauthn.create", challenge)?;
    let object = decode(&response.attestation_object, "attestation object")?;
    if object.len() > MAX_ATTESTATION_OBJECT {
        return Err(WebauthnError::Malformed("attestation object"));
    }
    let Ok(Value::Map(entries)) = coset::cbor::de::from_reader::<Value, _>(object.as_slice())
    else {
        return Err(WebauthnError::Malformed("attestation object"));
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| matches!(k, Value::Text(t) if t == name))
            .map(|(_, v)| v)
    };
    let (Some(Value::Text(fmt)), Some(Value::Map(statement)), Some(Value::Bytes(auth_data))) =
        (field("fmt"), field("attStmt"), field("authData"))
    else {
        return Err(WebauthnError::Malformed("attestation object"));
    };
    if fmt != "none" || !statement.is_empty() {
        return Err(WebauthnError::UnsupportedAttestation);
    }
    let data = AuthenticatorData::parse(auth_data)?;
    data.check(rp)?;
    let Some((credential_id, key)) = data.attested else {
        return Err(WebauthnError::Malformed("authenticator data"));
    };
    Ok(Registration {
        credential_id,
        key,
        sign_count: data.sign_count,
    })
}

/// A passkey's signature over one statement, as the page posts it from
/// `navigator.credentials.get()`, stored, and carried in receipts: every
/// member base64url, so an auditor re-checks it from these bytes alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assertion {
    pub credential_id: String,
    pub authenticator_data: String,
    pub client_data_json: String,
    pub signature: String,
}

impl Assertion {
    /// Verifies the assertion (WebAuthn section 7.2) over `statement` with
    /// the registered `key`; returns the authenticator's signature counter,
    /// which the caller compares with the stored one ([`counter_advances`]).
    pub fn verify(
        &self,
        rp: &RelyingParty,
        key: &CredentialKey,
        statement: &str,
    ) -> Result<u32, WebauthnError> {
        let client_data = decode(&self.client_data_json, "client data")?;
        check_client_data(
            rp,
            &client_data,
            "webauthn.get",
            &statement_challenge(statement),
        )?;
        let auth_data = decode(&self.authenticator_data, "authenticator data")?;
        let data = AuthenticatorData::parse(&auth_data)?;
        // An assertion carries no new credential (section 7.2).
        if data.attested.is_some() {
            return Err(WebauthnError::Malformed("authenticator data"));
        }
        data.check(rp)?;
        let signature = decode(&self.signature, "signature")?;
        let mut signed = auth_data;
        signed.extend_from_slice(&Sha256::digest(&client_data));
        key.verify(&signed, &signature)?;
        Ok(data.sign_count)
    }

    /// The credential id's bytes, if it is well formed.
    pub fn credential_id_bytes(&self) -> Result<Vec<u8>, WebauthnError> {
        let id = decode(&self.credential_id, "credential id")?;
        if id.is_empty() || id.len() > MAX_CREDENTIAL_ID {
            return Err(WebauthnError::Malformed("credential id"));
        }
        Ok(id)
    }
}

/// WebAuthn section 7.2 step 21: a counter that does not grow means two
/// authenticators hold one credential. Authenticators that keep no counter
/// (synced passkeys) report zero every time, which is allowed only while
/// the stored counter is zero too.
pub fn counter_advances(stored: u32, reported: u32) -> bool {
    reported > stored || (stored == 0 && reported == 0)
}

fn decode(text: &str, what: &'static str) -> Result<Vec<u8>, WebauthnError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| WebauthnError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::SoftAuthenticator;

    fn rp() -> RelyingParty {
        RelyingParty {
            id: "localhost".into(),
            origins: vec!["http://localhost:*".into()],
        }
    }

    const STATEMENT: &str = "dualtrust-approval-v1\nlease=00\n";

    /// One way a ceremony is made wrong.
    type Tamper = fn(&mut SoftAuthenticator);

    #[test]
    fn a_registered_credential_signs_one_statement_for_this_relying_party() {
        for alg in [ES256, EDDSA] {
            let mut device = SoftAuthenticator::new(alg, "http://localhost:8080", "localhost");
            let challenge = [7u8; 32];
            let registration =
                verify_registration(&rp(), &challenge, &device.register(&challenge)).expect("reg");
            assert_eq!(registration.key.alg(), alg);
            assert_eq!(registration.credential_id, device.credential_id());
            let key = CredentialKey::from_cose(registration.key.cose()).expect("round trip");

            let assertion = device.assert(STATEMENT);
            assert_eq!(assertion.verify(&rp(), &key, STATEMENT), Ok(1));
            assert_eq!(
                assertion.verify(&rp(), &key, "dualtrust-approval-v1\nlease=01\n"),
                Err(WebauthnError::ChallengeMismatch),
                "an assertion for one lease does not stand for another"
            );
            let mut flipped = assertion.clone();
            let mut sig = URL_SAFE_NO_PAD.decode(&flipped.signature).expect("b64");
            let last = sig.len() - 1;
            sig[last] ^= 1;
            flipped.signature = URL_SAFE_NO_PAD.encode(sig);
            assert_eq!(
                flipped.verify(&rp(), &key, STATEMENT),
                Err(WebauthnError::BadSignature)
            );
            let mut data = URL_SAFE_NO_PAD
                .decode(&assertion.authenticator_data)
                .expect("b64");
            data[36] ^= 1; // the counter: signed like everything else
            let tampered = Assertion {
                authenticator_data: URL_SAFE_NO_PAD.encode(&data),
                ..assertion.clone()
            };
            assert_eq!(
                tampered.verify(&rp(), &key, STATEMENT),
                Err(WebauthnError::BadSignature)
            );
        }
    }

    #[test]
    fn each_ceremony_check_refuses_its_attack() {
        let challenge = [1u8; 32];
        let mut device = SoftAuthenticator::new(ES256, "http://localhost:8080", "localhost");
        let key = verify_registration(&rp(), &challenge, &device.register(&challenge))
            .expect("reg")
            .key;
        let cases: [(&str, Tamper, WebauthnError); 5] = [
            (
                "a page of another origin",
                |d| d.origin = "http://evil.example".into(),
                WebauthnError::OriginNotAllowed,
            ),
            (
                "another relying party id",
                |d| d.rp_id = "evil.example".into(),
                WebauthnError::RpIdMismatch,
            ),
            (
                "no user verification",
                |d| d.user_verified = false,
                WebauthnError::UserNotVerified,
            ),
            (
                "a registration's client data",
                |d| d.ceremony = "webauthn.create",
                WebauthnError::WrongType,
            ),
            (
                "a cross-origin frame",
                |d| d.cross_origin = true,
                WebauthnError::CrossOrigin,
            ),
        ];
        for (what, change, expected) in cases {
            let mut d = device.clone();
            change(&mut d);
            assert_eq!(
                d.assert(STATEMENT).verify(&rp(), &key, STATEMENT),
                Err(expected),
                "{what}"
            );
        }
        let mut other = SoftAuthenticator::new(ES256, "http://localhost:8080", "localhost");
        assert_eq!(
            other.assert(STATEMENT).verify(&rp(), &key, STATEMENT),
            Err(WebauthnError::BadSignature),
            "another credential's signature"
        );
        device.user_verified = false;
        assert_eq!(
            verify_registration(&rp(), &challenge, &device.register(&challenge)).err(),
            Some(WebauthnError::UserNotVerified)
        );
        assert!(counter_advances(0, 0) && counter_advances(4, 5));
        assert!(!counter_advances(5, 5) && !counter_advances(5, 0) && !counter_advances(5, 4));
    }

    #[test]
    fn what_the_specification_rules_out_is_refused() {
        use coset::CborSerializable;
        let unnamed = coset::CoseKeyBuilder::new_ec2_pub_key(
            iana::EllipticCurve::P_256,
            vec![1; 32],
            vec![2; 32],
        )
        .build()
        .to_vec()
        .expect("cbor");
        assert_eq!(
            CredentialKey::from_cose(&unnamed).err(),
            Some(WebauthnError::UnsupportedAlgorithm),
            "a key without its algorithm"
        );
        let mut head = Sha256::digest(b"localhost").to_vec();
        head.extend_from_slice(&[USER_PRESENT | USER_VERIFIED | BACKED_UP, 0, 0, 0, 1]);
        assert!(
            AuthenticatorData::parse(&head).is_err(),
            "backed up but not eligible"
        );
        head[32] = USER_PRESENT | USER_VERIFIED | EXTENSIONS;
        let mut with_list = head.clone();
        with_list.push(0x80); // CBOR: an empty array
        assert!(
            AuthenticatorData::parse(&with_list).is_err(),
            "extensions that are not a map"
        );
        with_list[37] = 0xa0; // CBOR: an empty map
        assert!(AuthenticatorData::parse(&with_list).is_ok());

        // A registration's authenticator data, offered as an assertion's.
        let mut device = SoftAuthenticator::new(ES256, "http://localhost:8080", "localhost");
        let registration = device.register(&[3; 32]);
        let object: Value = coset::cbor::de::from_reader(
            URL_SAFE_NO_PAD
                .decode(&registration.attestation_object)
                .expect("b64")
                .as_slice(),
        )
        .expect("cbor");
        let auth_data = object
            .as_map()
            .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some("authData")))
            .and_then(|(_, v)| v.as_bytes())
            .expect("authData")
            .clone();
        let mut assertion = device.assert(STATEMENT);
        assertion.authenticator_data = URL_SAFE_NO_PAD.encode(auth_data);
        assert_eq!(
            assertion.verify(&rp(), &device.key(), STATEMENT),
            Err(WebauthnError::Malformed("authenticator data"))
        );
    }

    #[test]
    fn malformed_inputs_are_refused_without_panicking() {
        let key = CredentialKey::from_cose(
            SoftAuthenticator::new(EDDSA, "http://localhost", "localhost")
                .register(&[0; 32])
                .attestation_object
                .as_bytes(),
        );
        assert!(key.is_err(), "attestation bytes are not a COSE key");
        for data in [&[][..], &[0u8; 36], &[0xff; 37], &[0x41; 200], &[0x80; 37]] {
            assert!(AuthenticatorData::parse(data).is_err());
        }
        let assertion = Assertion {
            credential_id: "!".into(),
            authenticator_data: "AAAA".into(),
            client_data_json: "e30".into(),
            signature: "".into(),
        };
        let k = SoftAuthenticator::new(ES256, "http://localhost", "localhost").key();
        assert!(matches!(
            assertion.verify(&rp(), &k, STATEMENT),
            Err(WebauthnError::Malformed(_))
        ));
        assert!(assertion.credential_id_bytes().is_err());
    }
}
