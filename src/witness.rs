//! `dualtrust witness`: a small reference witness speaking C2SP
//! `tlog-witness`. It cosigns a log's checkpoint (C2SP `tlog-cosignature`
//! v1) only if the log's key signed it and it is consistent with the
//! largest checkpoint of that log the witness cosigned before, so a log
//! that shows one history to some clients and another to others cannot get
//! both cosigned by the same witness: clients that require cosignatures
//! from a quorum of witnesses catch the split view.
//!
//! State is one small JSON file (origin → size and root), replaced
//! atomically before each answer; the check and the update happen under
//! one lock, so two racing submissions cannot roll the log back.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::audit::checkpoint::{
    COSIGNATURE_TYPE, ForeignCheckpoint, NoteVerifier, cosignature_line, cosigner_key,
};
use crate::audit::merkle::{self, Hash};
use crate::keys::KeyPair;

/// Larger bodies are refused before they are read: 63 proof lines and a
/// checkpoint with a few signatures fit many times over.
const MAX_BODY: usize = 64 * 1024;
/// The protocol's limit on consistency proof lines.
const MAX_PROOF_LINES: usize = 63;

/// What the witness remembers of one log: the checkpoint it cosigned last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    size: u64,
    /// Base64, as in the checkpoint.
    root: String,
}

pub struct Witness {
    name: String,
    key: KeyPair,
    /// The logs it witnesses: their signed-note verifier keys (name = origin).
    logs: Vec<NoteVerifier>,
    state_path: PathBuf,
    state: tokio::sync::Mutex<BTreeMap<String, Seen>>,
}

/// A refusal: the status the protocol prescribes and a line saying why.
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub status: StatusCode,
    pub message: String,
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused {
        status,
        message: message.into(),
    }
}

impl Witness {
    /// A witness named `name` signing with `key`, for the logs whose
    /// verifier keys are `logs`, remembering what it cosigned in `state_path`.
    pub fn open(
        name: String,
        key: KeyPair,
        logs: Vec<NoteVerifier>,
        state_path: PathBuf,
    ) -> Result<Self, String> {
        if !crate::config::is_valid_note_name(&name) {
            return Err(format!(
                "{name:?} cannot name a witness (a signed-note key name)"
            ));
        }
        if let Some(bad) = logs.iter().find(|l| l.kind == COSIGNATURE_TYPE) {
            return Err(format!("{} is a witness key, not a log key", bad.name));
        }
        let state = match std::fs::read_to_string(&state_path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| format!("{}: not a witness state file: {e}", state_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", state_path.display())),
        };
        Ok(Self {
            name,
            key,
            logs,
            state_path,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// This witness's verifier key, for clients' witness sets.
    pub fn verifier_key(&self) -> String {
        cosigner_key(&self.name, &self.key.verifying_key())
    }

    /// `add-checkpoint`: the cosignature line(s), or the protocol's refusal.
    pub async fn add_checkpoint(&self, body: &[u8]) -> Result<String, Refused> {
        let request = Request::parse(body)?;
        let checkpoint = ForeignCheckpoint::parse(request.note)
            .map_err(|_| refused(StatusCode::BAD_REQUEST, "not a checkpoint note"))?;
        let origin = checkpoint.origin.as_str();
        if !self.logs.iter().any(|l| l.name == origin) {
            return Err(refused(StatusCode::NOT_FOUND, "unknown log origin"));
        }
        if !checkpoint.signed_by_any(&self.logs) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                "no signature by a key of this log",
            ));
        }
        if request.old > checkpoint.size {
            return Err(refused(
                StatusCode::BAD_REQUEST,
                "the old size is larger than the checkpoint's",
            ));
        }
        let mut state = self.state.lock().await;
        let seen = state.get(origin);
        let seen_size = seen.map_or(0, |s| s.size);
        let conflict = || Refused {
            status: StatusCode::CONFLICT,
            message: format!("{seen_size}\n"),
        };
        if request.old != seen_size {
            return Err(conflict());
        }
        let new_root = STANDARD.encode(checkpoint.root);
        if request.old == checkpoint.size {
            if seen.is_some_and(|s| s.root != new_root) {
                tracing::warn!(
                    origin,
                    size = checkpoint.size,
                    "a checkpoint signed by the log's key disagrees with the one cosigned at its size: a split view"
                );
                return Err(conflict());
            }
        } else if request.old == 0 {
            if !request.proof.is_empty() {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    "a proof from size 0 must be empty",
                ));
            }
        } else {
            let old_root: Hash = seen
                .and_then(|s| STANDARD.decode(&s.root).ok())
                .and_then(|r| r.try_into().ok())
                .ok_or_else(|| refused(StatusCode::INTERNAL_SERVER_ERROR, "corrupt state"))?;
            if !merkle::verify_consistency(
                request.old,
                checkpoint.size,
                &old_root,
                &checkpoint.root,
                &request.proof,
            ) {
                tracing::warn!(
                    origin,
                    old = request.old,
                    size = checkpoint.size,
                    "a checkpoint signed by the log's key is not consistent with the one cosigned before: a split view or a rewritten log"
                );
                return Err(refused(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "the consistency proof does not verify",
                ));
            }
        }
        let mut next = state.clone();
        next.insert(
            origin.to_string(),
            Seen {
                size: checkpoint.size,
                root: new_root,
            },
        );
        self.persist(&next)
            .await
            .map_err(|e| refused(StatusCode::SERVICE_UNAVAILABLE, e))?;
        *state = next;
        Ok(cosignature_line(
            &checkpoint.body,
            &self.name,
            &self.key,
            crate::now_unix(),
        ))
    }

    /// Replaces the state file: a new file, synced, renamed over the old,
    /// and the directory synced, so a crash cannot bring back a smaller
    /// tree (after which a fork would be cosigned). Off the async threads.
    async fn persist(&self, state: &BTreeMap<String, Seen>) -> Result<(), String> {
        let text = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        let path = self.state_path.clone();
        let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut temp = path.clone().into_os_string();
            temp.push(".next");
            let temp = PathBuf::from(temp);
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&text)?;
            file.sync_all()?;
            std::fs::rename(&temp, &path)?;
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(std::path::Path::new("."));
            std::fs::File::open(dir)?.sync_all()
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "the witness state could not be saved; nothing is cosigned");
                Err("the witness cannot save its state".to_string())
            }
            Err(_) => Err("the witness cannot save its state".to_string()),
        }
    }
}

/// An `add-checkpoint` body: `old N`, proof lines, a blank line, the note.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub old: u64,
    pub proof: Vec<Hash>,
    pub note: &'a str,
}

impl<'a> Request<'a> {
    /// Parses an untrusted body; a refusal says which line is wrong.
    pub fn parse(body: &'a [u8]) -> Result<Self, Refused> {
        let bad = |why: &str| refused(StatusCode::BAD_REQUEST, why);
        let text = std::str::from_utf8(body).map_err(|_| bad("the body is not UTF-8"))?;
        let (head, note) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line before the checkpoint"))?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .filter(|n| *n == "0" || (!n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| bad("the first line must be `old <size>`"))?;
        let mut proof = Vec::new();
        for line in lines {
            if proof.len() == MAX_PROOF_LINES {
                return Err(bad("more than 63 consistency proof lines"));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|h| Hash::try_from(h.as_slice()).ok())
                .ok_or_else(|| bad("a proof line is not a base64 SHA-256 hash"))?;
            proof.push(hash);
        }
        Ok(Self { old, proof, note })
    }
}

async fn add_checkpoint(State(witness): State<Arc<Witness>>, body: Bytes) -> Response {
    match witness.add_checkpoint(&body).await {
        Ok(lines) => (StatusCode::OK, lines).into_response(),
        Err(Refused { status, message }) => {
            let mut response = (status, message).into_response();
            if status == StatusCode::CONFLICT {
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/x.tlog.size"),
                );
            }
            response
        }
    }
}

/// Serves `POST /add-checkpoint` on `listener` until the process ends.
pub async fn serve(
    witness: Arc<Witness>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/add-checkpoint", axum::routing::post(add_checkpoint))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(witness);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{Checkpoint, verifier_key};
    use crate::audit::merkle::MerkleTree;

    const ORIGIN: &str = "example.com/log";

    fn tree(n: u8) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for i in 0..n {
            tree.push(merkle::leaf_hash(&[i]));
        }
        tree
    }

    fn note(tree: &MerkleTree, size: u64, key: &KeyPair) -> String {
        Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: tree.root(size).expect("size"),
            time: 1,
        }
        .sign(key)
    }

    fn body(old: u64, proof: &[Hash], note: &str) -> Vec<u8> {
        let mut text = format!("old {old}\n");
        for hash in proof {
            text.push_str(&STANDARD.encode(hash));
            text.push('\n');
        }
        text.push('\n');
        text.push_str(note);
        text.into_bytes()
    }

    fn witness(dir: &std::path::Path, log: &KeyPair) -> Witness {
        let vkey = NoteVerifier::parse(&verifier_key(ORIGIN, &log.verifying_key())).expect("vkey");
        Witness::open(
            "w.example/1".into(),
            KeyPair::generate().expect("key"),
            vec![vkey],
            dir.join("state.json"),
        )
        .expect("witness")
    }

    #[tokio::test]
    async fn cosigns_a_growing_log_and_refuses_a_fork_a_rollback_and_strangers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = KeyPair::generate().expect("key");
        let w = witness(dir.path(), &log);
        let honest = tree(9);
        let verifier = NoteVerifier::parse(&w.verifier_key()).expect("vkey");

        let first = note(&honest, 4, &log);
        let line = w
            .add_checkpoint(&body(0, &[], &first))
            .await
            .expect("first");
        let cosigned = format!("{first}{line}");
        assert_eq!(
            Checkpoint::cosigners(&cosigned, ORIGIN, std::slice::from_ref(&verifier)),
            Ok(vec!["w.example/1".to_string()])
        );
        // The client's old size is behind: 409 names the witness's.
        let later = note(&honest, 9, &log);
        let conflict = w
            .add_checkpoint(&body(0, &[], &later))
            .await
            .expect_err("409");
        assert_eq!(
            (conflict.status, conflict.message.as_str()),
            (StatusCode::CONFLICT, "4\n")
        );
        let proof = honest.consistency_proof(4, 9).expect("proof");
        w.add_checkpoint(&body(4, &proof, &later))
            .await
            .expect("consistent growth");

        // A fork signed by the log's own key: another leaf at 7.
        let mut forked = tree(7);
        forked.push(merkle::leaf_hash(b"forged"));
        forked.push(merkle::leaf_hash(&[8]));
        let fork = note(&forked, 9, &log);
        let same_size = w
            .add_checkpoint(&body(9, &[], &fork))
            .await
            .expect_err("fork");
        assert_eq!(same_size.status, StatusCode::CONFLICT);
        forked.push(merkle::leaf_hash(&[9]));
        let fork = note(&forked, 10, &log);
        let proof = forked.consistency_proof(9, 10).expect("proof");
        let grown = w
            .add_checkpoint(&body(9, &proof, &fork))
            .await
            .expect_err("fork");
        assert_eq!(grown.status, StatusCode::UNPROCESSABLE_ENTITY);
        // Rolling back is a conflict; the state survives a restart.
        let back = w
            .add_checkpoint(&body(4, &[], &first))
            .await
            .expect_err("rollback");
        assert_eq!(back.status, StatusCode::CONFLICT);
        let reopened = witness(dir.path(), &log);
        let again = reopened
            .add_checkpoint(&body(4, &[], &first))
            .await
            .expect_err("409");
        assert_eq!(again.message, "9\n");

        // Another log's key, an unknown origin, malformed bodies.
        let stranger = note(&honest, 9, &KeyPair::generate().expect("key"));
        assert_eq!(
            w.add_checkpoint(&body(9, &[], &stranger))
                .await
                .expect_err("403")
                .status,
            StatusCode::FORBIDDEN
        );
        let elsewhere = later.replace(ORIGIN, "example.com/other");
        assert_eq!(
            w.add_checkpoint(&body(9, &[], &elsewhere))
                .await
                .expect_err("404")
                .status,
            StatusCode::NOT_FOUND
        );
        for bad in [
            &b"old 09\n\n"[..],
            b"old 9",
            b"\xff\xfe",
            b"old 9\nnot base64\n\nx",
            b"old 99\n\nexample.com/log\n9\nAAAA\n",
        ] {
            let mut request = bad.to_vec();
            if bad.starts_with(b"old 9\nnot") || bad.starts_with(b"old 09") {
                request.extend_from_slice(later.as_bytes());
            }
            let refusal = w.add_checkpoint(&request).await.expect_err("400");
            assert!(
                matches!(
                    refusal.status,
                    StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND
                ),
                "{:?}: {refusal:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let too_long = body(9, &vec![[0u8; 32]; 64], &later);
        assert_eq!(
            w.add_checkpoint(&too_long).await.expect_err("400").status,
            StatusCode::BAD_REQUEST
        );
    }

    /// Another log's plain tlog-checkpoint (no `time` line, an extension
    /// line of its own) is witnessed too, cosigned over its text as written.
    #[tokio::test]
    async fn witnesses_any_c2sp_checkpoint_as_written() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().expect("tempdir");
        let log = KeyPair::generate().expect("key");
        let w = witness(dir.path(), &log);
        let honest = tree(3);
        let body = format!(
            "{ORIGIN}\n3\n{}\nexample-extension 7\n",
            STANDARD.encode(honest.root(3).expect("root"))
        );
        let mut blob = Sha256::new()
            .chain_update(format!("{ORIGIN}\n").as_bytes())
            .chain_update([0x01])
            .chain_update(log.verifying_key().as_bytes())
            .finalize()[..4]
            .to_vec();
        blob.extend_from_slice(&log.sign(body.as_bytes()));
        let note = format!("{body}\n\u{2014} {ORIGIN} {}\n", STANDARD.encode(blob));
        let line = w
            .add_checkpoint(&body_of(0, &note))
            .await
            .expect("cosigned");
        let sig = STANDARD
            .decode(line.trim_end().rsplit(' ').next().expect("blob"))
            .expect("b64");
        let time = u64::from_be_bytes(sig[4..12].try_into().expect("8"));
        let message = format!("cosignature/v1\ntime {time}\n{body}");
        let signature = ed25519_dalek::Signature::from_bytes(&sig[12..].try_into().expect("64"));
        let witness_key = NoteVerifier::parse(&w.verifier_key()).expect("vkey").key;
        assert!(
            witness_key
                .verify_strict(message.as_bytes(), &signature)
                .is_ok()
        );
        // A signature over other text is no signature of this log's.
        let edited = note.replacen("example-extension 7", "example-extension 8", 1);
        assert_eq!(
            w.add_checkpoint(&body_of(3, &edited))
                .await
                .expect_err("403")
                .status,
            StatusCode::FORBIDDEN
        );
    }

    fn body_of(old: u64, note: &str) -> Vec<u8> {
        body(old, &[], note)
    }
}
