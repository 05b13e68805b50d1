//! Signed checkpoints in the C2SP `tlog-checkpoint` format, signed as a
//! C2SP `signed-note` with an Ed25519 key — the form transparency logs
//! (Go's `sumdb/note`, Sigstore, Trillian tessera) use, so their tooling can
//! check ours:
//!
//! ```text
//! dualtrust/<server kid>        origin
//! 42                            tree size
//! <base64 root hash>            RFC 6962 tree head
//! time 1795413404               extension line: unix seconds
//!
//! — dualtrust/<server kid> <base64(key hash[4] || Ed25519 signature[64])>
//! ```
//!
//! The signature covers the note text up to and including the newline before
//! the blank line. The key hash is the first 4 bytes of
//! SHA-256(name || "\n" || 0x01 || public key) (signed-note, Ed25519 type 0x01).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::audit::merkle::Hash;
use crate::keys::{KeyPair, PublishedKey};

const SIGNATURE_PREFIX: &str = "\u{2014} ";
const ED25519_TYPE: u8 = 0x01;

/// One signature line of a note: the signer's name and its decoded blob
/// (key hash, then the signature or cosignature).
pub type NoteSignature = (String, Vec<u8>);

/// A verified (or freshly signed) checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    pub time: u64,
}

/// A checkpoint whose signature verified for its origin's key: what proofs
/// are checked against. Only [`Checkpoint::verify`] makes one; it reads as
/// the checkpoint it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCheckpoint(Checkpoint);

impl std::ops::Deref for VerifiedCheckpoint {
    type Target = Checkpoint;
    fn deref(&self) -> &Checkpoint {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("not a signed checkpoint note")]
    Malformed,
    #[error("the checkpoint is for another log")]
    WrongOrigin,
    #[error("no signature by this server's key")]
    UnknownKey,
    #[error("the checkpoint signature does not verify")]
    BadSignature,
    #[error("the checkpoint is signed by a server key retired before this tree size")]
    KeyRetired,
}

impl CheckpointError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Malformed => "checkpoint_malformed",
            Self::WrongOrigin => "checkpoint_origin",
            Self::UnknownKey => "checkpoint_key",
            Self::BadSignature => "checkpoint_signature",
            Self::KeyRetired => "checkpoint_key_retired",
        }
    }
}

pub use crate::keyring::origin_for;

/// The signature type of a C2SP `tlog-cosignature` v1 (Ed25519, timestamped).
pub const COSIGNATURE_TYPE: u8 = 0x04;
const COSIGNATURE_HEADER: &str = "cosignature/v1";

fn key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    typed_key_hash(name, ED25519_TYPE, key)
}

/// signed-note key ID: SHA-256(name || "\n" || type || key)[:4].
fn typed_key_hash(name: &str, kind: u8, key: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update([kind]);
    h.update(key.as_bytes());
    let digest = h.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The signed-note verifier key string (`name+hash+base64(0x01||key)`) that
/// note tooling takes.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> String {
    typed_verifier_key(name, ED25519_TYPE, key)
}

/// A witness's verifier key (`name+hash+base64(0x04||key)`), as witness
/// tooling (and `audit verify --witness`) takes it.
pub fn cosigner_key(name: &str, key: &VerifyingKey) -> String {
    typed_verifier_key(name, COSIGNATURE_TYPE, key)
}

fn typed_verifier_key(name: &str, kind: u8, key: &VerifyingKey) -> String {
    let mut raw = vec![kind];
    raw.extend_from_slice(key.as_bytes());
    format!(
        "{name}+{}+{}",
        hex::encode(typed_key_hash(name, kind, key)),
        STANDARD.encode(raw)
    )
}

/// A `tlog-cosignature` v1 line over a note `body` (with its final newline).
pub fn cosignature_line(body: &str, name: &str, key: &KeyPair, time: u64) -> String {
    let message = format!("{COSIGNATURE_HEADER}\ntime {time}\n{body}");
    let mut blob = typed_key_hash(name, COSIGNATURE_TYPE, &key.verifying_key()).to_vec();
    blob.extend_from_slice(&time.to_be_bytes());
    blob.extend_from_slice(&key.sign(message.as_bytes()));
    format!("{SIGNATURE_PREFIX}{name} {}\n", STANDARD.encode(blob))
}

/// Any log's C2SP checkpoint, as a witness reads it: origin, size and root,
/// then whatever extension lines the log writes, all signed as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
    /// The signed text, final newline included.
    pub body: String,
    signatures: Vec<NoteSignature>,
}

impl ForeignCheckpoint {
    pub fn parse(note: &str) -> Result<Self, CheckpointError> {
        let (text, signature_text) = note.split_once("\n\n").ok_or(CheckpointError::Malformed)?;
        let mut lines = text.split('\n');
        let (Some(origin), Some(size), Some(root)) = (lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::Malformed);
        };
        if origin.is_empty() || lines.any(str::is_empty) {
            return Err(CheckpointError::Malformed);
        }
        let size = decimal(size).ok_or(CheckpointError::Malformed)?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed)?;
        let mut signatures = Vec::new();
        for line in signature_text.lines() {
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(CheckpointError::Malformed)?;
            let (name, blob) = rest.split_once(' ').ok_or(CheckpointError::Malformed)?;
            let blob = STANDARD
                .decode(blob)
                .map_err(|_| CheckpointError::Malformed)?;
            signatures.push((name.to_string(), blob));
        }
        Ok(Self {
            origin: origin.to_string(),
            size,
            root,
            body: format!("{text}\n"),
            signatures,
        })
    }

    /// Whether one of `keys` (Ed25519 log keys named by this origin) signed it.
    pub fn signed_by_any(&self, keys: &[NoteVerifier]) -> bool {
        keys.iter()
            .filter(|k| k.kind == ED25519_TYPE && k.name == self.origin)
            .any(|k| {
                let id = key_hash(&k.name, &k.key);
                self.signatures.iter().any(|(name, blob)| {
                    *name == self.origin
                        && blob.len() == 68
                        && blob[..4] == id
                        && <[u8; 64]>::try_from(&blob[4..]).is_ok_and(|sig| {
                            k.key
                                .verify_strict(self.body.as_bytes(), &Signature::from_bytes(&sig))
                                .is_ok()
                        })
                })
            })
    }
}

/// A parsed verifier key: whose signatures of which type it checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    pub name: String,
    pub kind: u8,
    pub key: VerifyingKey,
}

impl NoteVerifier {
    /// Parses `name+hash+base64(type||key)` for an Ed25519 log key (0x01)
    /// or cosigner key (0x04); the hash must be the key's own.
    pub fn parse(vkey: &str) -> Option<Self> {
        let mut parts = vkey.trim().splitn(3, '+');
        let (name, hash, raw) = (parts.next()?, parts.next()?, parts.next()?);
        let raw = STANDARD.decode(raw).ok()?;
        let (&kind, key) = raw.split_first()?;
        if name.is_empty() || !matches!(kind, ED25519_TYPE | COSIGNATURE_TYPE) {
            return None;
        }
        let key = VerifyingKey::from_bytes(&<[u8; 32]>::try_from(key).ok()?).ok()?;
        (hex::decode(hash).ok()? == typed_key_hash(name, kind, &key)).then(|| Self {
            name: name.to_string(),
            kind,
            key,
        })
    }
}

/// A number exactly as the note format writes it (tlog-checkpoint: ASCII
/// decimal, no sign, no leading zeros), so one checkpoint has one text.
fn decimal(text: &str) -> Option<u64> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten()
}

impl Checkpoint {
    /// The note text that is signed (and cosigned).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\ntime {}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root),
            self.time
        )
    }

    /// The signed note text.
    pub fn sign(&self, key: &KeyPair) -> String {
        let body = self.body();
        let vk = key.verifying_key();
        let mut blob = key_hash(&self.origin, &vk).to_vec();
        blob.extend_from_slice(&key.sign(body.as_bytes()));
        format!(
            "{body}\n{SIGNATURE_PREFIX}{} {}\n",
            self.origin,
            STANDARD.encode(blob)
        )
    }

    /// A `tlog-cosignature` v1 line by witness `name` at unix time `time`:
    /// its statement that, as of `time`, this is the largest consistent
    /// tree it has seen of this log.
    pub fn cosignature(&self, name: &str, key: &KeyPair, time: u64) -> String {
        cosignature_line(&self.body(), name, key, time)
    }

    /// Which of `witnesses` cosigned `note` (each named once, in the order
    /// given), after the checkpoint itself parses as one of `origin`.
    /// Lines by other keys are passed over, as the protocol asks.
    pub fn cosigners(
        note: &str,
        origin: &str,
        witnesses: &[NoteVerifier],
    ) -> Result<Vec<String>, CheckpointError> {
        let (checkpoint, signatures) = Self::parse(note, origin)?;
        let body = checkpoint.body();
        let mut cosigned = Vec::new();
        for witness in witnesses.iter().filter(|w| w.kind == COSIGNATURE_TYPE) {
            let id = typed_key_hash(&witness.name, COSIGNATURE_TYPE, &witness.key);
            let valid = signatures.iter().any(|(name, blob)| {
                if *name != witness.name || blob.len() != 76 || blob[..4] != id {
                    return false;
                }
                let time = u64::from_be_bytes(blob[4..12].try_into().unwrap_or_default());
                let Ok(sig) = <[u8; 64]>::try_from(&blob[12..]) else {
                    return false;
                };
                let message = format!("{COSIGNATURE_HEADER}\ntime {time}\n{body}");
                time <= i64::MAX as u64
                    && witness
                        .key
                        .verify_strict(message.as_bytes(), &Signature::from_bytes(&sig))
                        .is_ok()
            });
            if valid && !cosigned.contains(&witness.name) {
                cosigned.push(witness.name.clone());
            }
        }
        Ok(cosigned)
    }

    /// Parses and verifies a signed checkpoint of the log named `origin`
    /// against its server keys: a signature by one of them whose span
    /// covers the checkpoint's size. Other signature lines (a witness's
    /// cosignature, a key this verifier does not know) are passed over.
    pub fn verify(
        note: &str,
        origin: &str,
        keys: &[PublishedKey],
    ) -> Result<VerifiedCheckpoint, CheckpointError> {
        let (checkpoint, signatures) = Self::parse(note, origin)?;
        let mut failure = CheckpointError::UnknownKey;
        for (name, blob) in &signatures {
            if name != origin || blob.len() != 68 {
                continue;
            }
            for key in keys
                .iter()
                .filter(|k| key_hash(origin, &k.key) == blob[..4])
            {
                let sig =
                    <[u8; 64]>::try_from(&blob[4..]).map_err(|_| CheckpointError::Malformed)?;
                if key
                    .key
                    .verify_strict(checkpoint.body().as_bytes(), &Signature::from_bytes(&sig))
                    .is_err()
                {
                    failure = CheckpointError::BadSignature;
                } else if !key.signs_checkpoint(checkpoint.size, &checkpoint.root) {
                    failure = CheckpointError::KeyRetired;
                } else {
                    return Ok(VerifiedCheckpoint(checkpoint));
                }
            }
        }
        Err(failure)
    }

    /// The checkpoint a note states and its signature lines (name, decoded
    /// blob), unverified; the body must be the one canonical text.
    pub fn parse(
        note: &str,
        origin: &str,
    ) -> Result<(Checkpoint, Vec<NoteSignature>), CheckpointError> {
        let note = ForeignCheckpoint::parse(note)?;
        if note.origin != origin {
            return Err(CheckpointError::WrongOrigin);
        }
        let time = note
            .body
            .lines()
            .skip(3)
            .find_map(|l| l.strip_prefix("time "))
            .and_then(decimal)
            .unwrap_or(0);
        let checkpoint = Self {
            origin: note.origin,
            size: note.size,
            root: note.root,
            time,
        };
        // What is signed is the body as written; a note whose body is not
        // the canonical text of what it states is not one of ours.
        if checkpoint.body() != note.body {
            return Err(CheckpointError::Malformed);
        }
        Ok((checkpoint, note.signatures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_checkpoint_round_trips_and_rejects_edits() {
        let key = KeyPair::generate().expect("key");
        let origin = origin_for(key.kid());
        let cp = Checkpoint {
            origin: origin.clone(),
            size: 42,
            root: [7u8; 32],
            time: 1_700_000_000,
        };
        let note = cp.sign(&key);
        assert!(note.contains("\n\n\u{2014} dualtrust/"));
        assert_eq!(
            Checkpoint::verify(
                &note,
                &origin,
                &[PublishedKey::unbounded(key.verifying_key())]
            )
            .as_deref(),
            Ok(&cp)
        );
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            Checkpoint::verify(
                &edited,
                &origin,
                &[PublishedKey::unbounded(key.verifying_key())]
            ),
            Err(CheckpointError::BadSignature)
        );
        let other = KeyPair::generate().expect("key");
        assert_eq!(
            Checkpoint::verify(
                &note,
                &origin,
                &[PublishedKey::unbounded(other.verifying_key())]
            ),
            Err(CheckpointError::UnknownKey)
        );
        assert_eq!(
            Checkpoint::verify(
                &note,
                "elsewhere",
                &[PublishedKey::unbounded(key.verifying_key())]
            ),
            Err(CheckpointError::WrongOrigin)
        );
        assert_eq!(
            Checkpoint::verify(
                "garbage",
                &origin,
                &[PublishedKey::unbounded(key.verifying_key())]
            ),
            Err(CheckpointError::Malformed)
        );
        assert!(verifier_key(&origin, &key.verifying_key()).starts_with(&format!("{origin}+")));
    }

    /// Found by `fuzz/` (target `audit`): a signed body whose numbers carry
    /// a sign or leading zeros verified as the checkpoint of another text.
    #[test]
    fn fuzz_finding_numbers_have_one_spelling() {
        let key = KeyPair::generate().expect("key");
        let origin = origin_for(key.kid());
        let root = STANDARD.encode([7u8; 32]);
        let sign = |body: String| {
            let mut blob = key_hash(&origin, &key.verifying_key()).to_vec();
            blob.extend_from_slice(&key.sign(body.as_bytes()));
            format!(
                "{body}\n{SIGNATURE_PREFIX}{origin} {}\n",
                STANDARD.encode(blob)
            )
        };
        for (size, time) in [
            ("+42", "1"),
            ("042", "1"),
            ("42", "0850000000"),
            ("42", "+5"),
        ] {
            let note = sign(format!("{origin}\n{size}\n{root}\ntime {time}\n"));
            let opened = Checkpoint::verify(
                &note,
                &origin,
                &[PublishedKey::unbounded(key.verifying_key())],
            );
            assert!(
                opened
                    .as_ref()
                    .ok()
                    .is_none_or(|cp| cp.size == 42 && cp.time == 0 && size == "42"),
                "{size} {time}: {opened:?}"
            );
        }
        let note = sign(format!("{origin}\n0\n{root}\ntime 0\n"));
        assert!(
            Checkpoint::verify(
                &note,
                &origin,
                &[PublishedKey::unbounded(key.verifying_key())]
            )
            .is_ok()
        );
    }

    #[test]
    fn cosignatures_are_tlog_cosignature_v1_by_the_named_witness_key_only() {
        let log = KeyPair::generate().expect("key");
        let witness = KeyPair::generate().expect("key");
        let origin = "example.com/log";
        let cp = Checkpoint {
            origin: origin.into(),
            size: 7,
            root: [3u8; 32],
            time: 1_700_000_000,
        };
        let line = cp.cosignature("w.example/1", &witness, 1_700_000_005);
        let blob = STANDARD
            .decode(line.trim_end().rsplit(' ').next().expect("blob"))
            .expect("b64");
        assert_eq!(blob.len(), 4 + 8 + 64);
        assert_eq!(
            u64::from_be_bytes(blob[4..12].try_into().expect("8")),
            1_700_000_005
        );
        // The signed message is the header, the time line and the body.
        let message = format!("cosignature/v1\ntime 1700000005\n{}", cp.body());
        let sig = Signature::from_bytes(&blob[12..].try_into().expect("64"));
        assert!(
            witness
                .verifying_key()
                .verify_strict(message.as_bytes(), &sig)
                .is_ok()
        );

        let vkey = cosigner_key("w.example/1", &witness.verifying_key());
        let verifier = NoteVerifier::parse(&vkey).expect("vkey parses");
        assert_eq!(verifier.kind, COSIGNATURE_TYPE);
        let note = format!("{}{line}", cp.sign(&log));
        assert_eq!(
            Checkpoint::cosigners(&note, origin, std::slice::from_ref(&verifier)),
            Ok(vec!["w.example/1".to_string()])
        );
        // The log key's signature is no cosignature, another witness key
        // does not count, and an edited body voids the cosignature.
        let other = NoteVerifier::parse(&cosigner_key(
            "w.example/1",
            &KeyPair::generate().expect("key").verifying_key(),
        ))
        .expect("vkey");
        assert_eq!(Checkpoint::cosigners(&note, origin, &[other]), Ok(vec![]));
        let log_as_witness =
            NoteVerifier::parse(&verifier_key(origin, &log.verifying_key())).expect("vkey");
        assert_eq!(
            Checkpoint::cosigners(&note, origin, &[log_as_witness]),
            Ok(vec![])
        );
        let edited = note.replacen("\n7\n", "\n8\n", 1);
        assert_eq!(
            Checkpoint::cosigners(&edited, origin, &[verifier]),
            Ok(vec![])
        );
        // A verifier key whose hash is not its key's is refused.
        let mut bad = vkey.clone();
        bad.replace_range(12..14, if &vkey[12..14] == "00" { "11" } else { "00" });
        assert!(NoteVerifier::parse(&bad).is_none());
    }
}
