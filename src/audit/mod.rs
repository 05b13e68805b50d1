//! Audit receipts: one for every decision, allowed or denied.
//!
//! A receipt's body is serialized with RFC 8785 (JSON Canonicalization
//! Scheme); `hash` is the SHA-256 of those canonical bytes and `sig` is an
//! Ed25519 signature (RFC 8032) over the same bytes by the server key named
//! in `body.kid`. Anyone holding the server's JWKS can check a receipt with
//! standard tools: canonicalize `body`, hash, verify.
//!
//! Receipts are chained: `body.prev` is the hash of the receipt before it in
//! the log and `body.seq` its position. The canonical bodies are also the
//! leaves of an RFC 6962 Merkle tree ([`merkle`]) whose heads the server
//! signs as C2SP checkpoints ([`checkpoint`]); a receipt comes with an
//! inclusion proof against a checkpoint, and two checkpoints with a
//! consistency proof, so deleting, reordering or editing a past receipt, or
//! truncating and re-growing the log, is detected by anyone holding an
//! earlier checkpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};

use crate::keyring::ServerKeys;
use crate::keys::{KeyPair, PublishedKey};
use crate::store::{LogRow, Store, StoreError};

pub mod checkpoint;
pub mod merkle;
pub mod witnessing;

use checkpoint::{Checkpoint, CheckpointError, VerifiedCheckpoint};
use merkle::MerkleTree;

pub const RECEIPT_TYPE: &str = "dualtrust.receipt.v1";
/// `prev` of the first receipt in a log.
pub const GENESIS_PREV: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The call passed the gate and ran.
    Allowed,
    /// The gate refused the call; nothing ran.
    Denied,
    /// The call passed the gate but the tool failed.
    Error,
    /// The call is destructive and lacks quorum approval; nothing ran.
    ApprovalRequired,
    /// An explicit lease was issued; nothing ran.
    LeaseIssued,
    /// A destructive call is about to run (recorded before it does).
    Intent,
    /// A registered approver's signed approval was recorded.
    ApprovalRecorded,
    /// A registered approver's signed rejection ended a held call.
    RejectionRecorded,
    /// A held call's approval window closed without quorum; it never ran.
    LeaseExpired,
    /// An approver registered a passkey; it counts once confirmed.
    PasskeyRegistered,
    /// An operator confirmed a registered passkey.
    PasskeyConfirmed,
    /// An operator revoked a passkey; it counts no more.
    PasskeyRevoked,
}

/// What the gate knows about a decision; the log adds position and time.
#[derive(Debug, Clone, Default)]
pub struct ReceiptDraft {
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub transport: &'static str,
    pub tool: String,
    pub class: Option<&'static str>,
    pub scope: Option<String>,
    pub args_digest: Option<String>,
    pub lease: Option<String>,
    pub decision: Option<Decision>,
    pub reason: Option<String>,
    pub outcome: Option<serde_json::Value>,
    /// The W3C trace the request belonged to, if it said.
    pub trace_id: Option<String>,
    /// An ordinary call's lease, minted and consumed: stored in the same
    /// transaction as this receipt (not part of the receipt itself).
    pub consumed_lease: Option<crate::store::Lease>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub seq: u64,
    pub prev: String,
    pub ts_ms: u64,
    /// `kid` (RFC 7638 thumbprint) of the server key that signed.
    pub kid: String,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub transport: String,
    pub tool: String,
    pub class: Option<String>,
    pub scope: Option<String>,
    pub args_digest: Option<String>,
    pub lease: Option<String>,
    pub decision: Decision,
    pub reason: Option<String>,
    pub outcome: Option<serde_json::Value>,
    /// The W3C trace id the request carried (`traceparent`); absent when
    /// it carried none, so receipts written before it existed read the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The signed statement.
    #[schemars(with = "serde_json::Map<String, serde_json::Value>")]
    pub body: ReceiptBody,
    /// SHA-256 (hex) of the RFC 8785 canonical form of `body`.
    pub hash: String,
    /// Ed25519 signature (base64url) over the RFC 8785 canonical form of `body`.
    pub sig: String,
}

/// Which check on a receipt failed. Each has a fixed, explainable meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiptCheckError {
    #[error("the receipt body cannot be canonicalized")]
    Canonicalization,
    #[error("hash mismatch: the body is not the one that was hashed")]
    HashMismatch,
    #[error("the signing key is not one of this server's keys")]
    UnknownKey,
    #[error("the signature is not 64 base64url-encoded bytes")]
    MalformedSignature,
    #[error("the signature does not verify: the body was altered or signed by another key")]
    BadSignature,
    #[error("signed by a server key retired before this receipt's place in the log")]
    KeyRetired,
    #[error(
        "the log's receipts before a key's retirement do not hash to the root it was retired at"
    )]
    RetirementRoot,
    #[error("no receipt with this sequence number is in the log")]
    NotInLog,
    #[error("the log holds a different receipt at this sequence number")]
    LogMismatch,
    #[error("the receipt's prev does not match the hash of the receipt before it")]
    ChainBroken,
    #[error("the checkpoint is not one signed by this server")]
    CheckpointInvalid,
    #[error("the inclusion proof does not lead from this receipt to the checkpoint's root")]
    InclusionFailed,
    #[error(
        "the store no longer matches the log its checkpoints sign: a stored receipt was modified"
    )]
    StoreMismatch,
}

impl ReceiptCheckError {
    pub fn code(self) -> &'static str {
        match self {
            Self::Canonicalization => "canonicalization",
            Self::HashMismatch => "hash",
            Self::UnknownKey => "unknown_key",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "signature",
            Self::KeyRetired => "key_retired",
            Self::RetirementRoot => "retirement_root",
            Self::NotInLog => "not_in_log",
            Self::LogMismatch => "log_mismatch",
            Self::ChainBroken => "chain",
            Self::CheckpointInvalid => "checkpoint",
            Self::InclusionFailed => "inclusion",
            Self::StoreMismatch => "store_mismatch",
        }
    }
}

pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, ReceiptCheckError> {
    serde_json_canonicalizer::to_vec(value).map_err(|_| ReceiptCheckError::Canonicalization)
}

/// The largest integer I-JSON (RFC 7493 section 2.2) carries exactly. RFC
/// 8785 writes numbers as IEEE doubles, so past it two bodies would share
/// one canonical form, and one signature (found by the `audit` fuzz target:
/// `ts_ms` 144448700000000005 canonicalized as …000).
const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// The signed bytes of a receipt body: its RFC 8785 form, refused when a
/// number in it could not be carried exactly.
pub fn body_bytes(body: &ReceiptBody) -> Result<Vec<u8>, ReceiptCheckError> {
    fn exact(value: &serde_json::Value) -> bool {
        match value {
            serde_json::Value::Number(n) => {
                n.as_u64().is_none_or(|u| u <= MAX_EXACT_INTEGER)
                    && n.as_i64()
                        .is_none_or(|i| i.unsigned_abs() <= MAX_EXACT_INTEGER)
            }
            serde_json::Value::Array(items) => items.iter().all(exact),
            serde_json::Value::Object(members) => members.values().all(exact),
            _ => true,
        }
    }
    if body.seq > MAX_EXACT_INTEGER
        || body.ts_ms > MAX_EXACT_INTEGER
        || !body.outcome.as_ref().is_none_or(exact)
    {
        return Err(ReceiptCheckError::Canonicalization);
    }
    canonical_bytes(body)
}

impl Receipt {
    pub fn seal(body: ReceiptBody, key: &KeyPair) -> Result<Self, ReceiptCheckError> {
        let bytes = body_bytes(&body)?;
        Ok(Self {
            hash: crate::sha256_hex(&bytes),
            sig: URL_SAFE_NO_PAD.encode(key.sign(&bytes)),
            body,
        })
    }

    /// Checks hash and signature against the given server keys (by `kid`),
    /// and that the key signs this receipt's place in the log.
    pub fn check_signature(&self, keys: &[PublishedKey]) -> Result<(), ReceiptCheckError> {
        self.check_and_hash(keys).map(|_| ())
    }

    /// [`Receipt::check_signature`], returning the RFC 6962 leaf hash from
    /// the same canonical bytes (one canonicalization instead of two).
    pub fn check_and_hash(&self, keys: &[PublishedKey]) -> Result<merkle::Hash, ReceiptCheckError> {
        let bytes = body_bytes(&self.body)?;
        if crate::sha256_hex(&bytes) != self.hash {
            return Err(ReceiptCheckError::HashMismatch);
        }
        let key = keys
            .iter()
            .find(|k| k.kid == self.body.kid)
            .ok_or(ReceiptCheckError::UnknownKey)?;
        let sig = URL_SAFE_NO_PAD
            .decode(&self.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b.as_slice()).ok())
            .ok_or(ReceiptCheckError::MalformedSignature)?;
        key.key
            .verify_strict(&bytes, &Signature::from_bytes(&sig))
            .map_err(|_| ReceiptCheckError::BadSignature)?;
        if !key.signs_receipt(self.body.seq) {
            return Err(ReceiptCheckError::KeyRetired);
        }
        Ok(merkle::leaf_hash(&bytes))
    }
}

/// The rule that makes receipts one log: sequence numbers without gaps from
/// 0, and each `prev` the hash of the receipt before (the first: 64 zeros).
/// The one place it is checked: at load, online (`audit.verify`), and
/// offline (`dualtrust audit verify`).
#[derive(Debug, Clone)]
pub struct Chain {
    next_seq: u64,
    prev: String,
}

impl Chain {
    pub fn genesis() -> Self {
        Self::after(0, GENESIS_PREV)
    }

    /// The chain continuing with receipt `next_seq`, after one hashing to `prev`.
    pub fn after(next_seq: u64, prev: &str) -> Self {
        Self {
            next_seq,
            prev: prev.to_string(),
        }
    }

    /// Links `receipt`, whose hash and signature the caller has checked.
    pub fn link(&mut self, receipt: &Receipt) -> Result<(), ReceiptCheckError> {
        if receipt.body.seq != self.next_seq {
            return Err(ReceiptCheckError::NotInLog);
        }
        if receipt.body.prev != self.prev {
            return Err(ReceiptCheckError::ChainBroken);
        }
        self.next_seq += 1;
        self.prev.clone_from(&receipt.hash);
        Ok(())
    }

    /// The hash the next receipt's `prev` must name.
    pub fn prev(&self) -> &str {
        &self.prev
    }
}

/// A receipt with what proves it is in the log: its leaf index, an RFC 6962
/// inclusion proof, and the signed checkpoint that proof is against.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogProof {
    pub leaf_index: u64,
    pub tree_size: u64,
    /// Audit path, hex, leaf to root (RFC 6962 section 2.1.1).
    pub inclusion: Vec<String>,
    /// C2SP signed-note checkpoint for `tree_size`.
    pub checkpoint: String,
}

/// What `append` returns: the durable receipt and its proof.
#[derive(Debug, Clone)]
pub struct Appended {
    pub receipt: Receipt,
    pub proof: LogProof,
}

/// RFC 6962 leaf of a receipt: its RFC 8785 canonical body.
pub fn leaf_hash_of(body: &ReceiptBody) -> Result<merkle::Hash, ReceiptCheckError> {
    Ok(merkle::leaf_hash(&body_bytes(body)?))
}

struct LogState {
    tree: MerkleTree,
    /// Hash (receipt `hash`) of the newest receipt, the next one's `prev`.
    last_hash: String,
}

type Waiter = tokio::sync::oneshot::Sender<Result<Appended, StoreError>>;

/// What the writer task is asked to do, in order.
// Nearly every job is an append: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Job {
    Append(ReceiptDraft, Waiter),
    /// Answered once every append queued before it is committed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The append-only receipt log: a hash chain and an RFC 6962 Merkle tree
/// over the same receipts.
///
/// Appends are group-committed: callers queue their drafts; whoever holds
/// the writer lock takes every queued draft, writes them in one store
/// transaction, and answers each caller only after the commit. One
/// checkpoint signature covers the whole batch. The in-memory tree mirrors
/// the store and is re-synchronized before each batch, so receipts written
/// by another process (e.g. `dualtrust approve`) are picked up; the store's
/// unique `seq` makes a racing writer retry rather than fork the log.
pub struct AuditLog {
    inner: Arc<LogInner>,
    appends: tokio::sync::mpsc::UnboundedSender<Job>,
}

/// The log's shared state, between callers and the writer task.
struct LogInner {
    store: Store,
    keys: Arc<ServerKeys>,
    state: tokio::sync::Mutex<LogState>,
    /// The first disagreement found between the stored bytes and the tree;
    /// once set, the log accepts no appends (it would sign over it).
    integrity: std::sync::Mutex<Option<IntegrityFailure>>,
    /// One re-verification of the whole store at a time; when the last
    /// complete one started.
    scrub: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// What `/metrics` reports, readable without the state lock.
    status: LogStatus,
}

/// The log's size and freshness, for dashboards and alerts.
#[derive(Debug, Default)]
pub struct LogStatus {
    /// Receipts in the log as this process last saw it.
    pub size: std::sync::atomic::AtomicU64,
    /// Unix ms of this process's last committed batch (0: none yet).
    pub last_append_ms: std::sync::atomic::AtomicU64,
    /// Size of the newest checkpoint witnesses cosigned for this process.
    pub cosigned_size: std::sync::atomic::AtomicU64,
    /// Unix ms it was cosigned (0: never).
    pub cosigned_ms: std::sync::atomic::AtomicU64,
}

/// Where and how the stored log stopped matching its own tree.
#[derive(Debug, Clone, Serialize)]
pub struct IntegrityFailure {
    pub seq: u64,
    pub problem: &'static str,
}

/// How often the whole store is re-derived and held against the tree
/// while the server runs, so bytes edited behind its back are found even if
/// nobody asks about them.
const SCRUB_INTERVAL: std::time::Duration = std::time::Duration::from_secs(300);

/// Receipts in log order from `from_seq`, at most `limit`, parsed from the
/// store's bytes (not checked: that is the verifiers' work).
pub async fn stored_receipts(
    store: &Store,
    from_seq: u64,
    limit: u32,
) -> Result<Vec<Receipt>, StoreError> {
    store
        .log_rows(from_seq, limit)
        .await?
        .iter()
        .map(|row| serde_json::from_str(&row.receipt).map_err(|_| StoreError::Corrupt))
        .collect()
}

/// A stored row re-derived from its receipt bytes: the receipt and its
/// RFC 6962 leaf, after checking every derived column against them.
fn derive_row(row: &LogRow) -> Result<(Receipt, merkle::Hash), &'static str> {
    let receipt: Receipt =
        serde_json::from_str(&row.receipt).map_err(|_| "its stored JSON is not a receipt")?;
    let bytes = body_bytes(&receipt.body).map_err(|_| "its body cannot be canonicalized")?;
    if crate::sha256_hex(&bytes) != receipt.hash {
        return Err("its body does not hash to its recorded hash");
    }
    if row.hash != receipt.hash {
        return Err("its hash column disagrees with the receipt");
    }
    if receipt.body.seq != row.seq {
        return Err("its sequence number disagrees with its row");
    }
    let leaf = merkle::leaf_hash(&bytes);
    if row
        .leaf_hash
        .as_ref()
        .is_some_and(|stored| *stored != hex::encode(leaf))
    {
        return Err("its leaf hash column disagrees with its body");
    }
    Ok((receipt, leaf))
}

// A batch is first offered as built on this writer's view; after this
// many losses to other writers it is rebuilt under the store's lock on
// what they appended, so it cannot lose again. An attempt after that is
// repeated only after catching up with a long tail, or a key rotation.
const OPTIMISTIC_ATTEMPTS: usize = 3;
const APPEND_ATTEMPTS: usize = OPTIMISTIC_ATTEMPTS + 8;
const SYNC_PAGE: u32 = 10_000;

impl AuditLog {
    /// Opens the log and starts its writer task. The tree is rebuilt from
    /// the store in the background (a million receipts take seconds, and a
    /// stdio server must answer `initialize` long before that); whatever
    /// needs the tree first waits for it under the state lock.
    pub async fn open(store: Store, keys: Arc<ServerKeys>) -> Result<Self, StoreError> {
        let inner = Arc::new(LogInner {
            store,
            keys,
            state: tokio::sync::Mutex::new(LogState {
                tree: MerkleTree::new(),
                last_hash: GENESIS_PREV.to_string(),
            }),
            integrity: std::sync::Mutex::new(None),
            scrub: tokio::sync::Mutex::new(None),
            status: LogStatus::default(),
        });
        // Fail now, not at the first call, when the store cannot be read.
        inner.store.log_head().await?;
        let loader = inner.clone();
        tokio::spawn(async move {
            let mut state = loader.state.lock().await;
            if let Err(e) = loader.sync(&mut state).await {
                tracing::error!(error = %e, "the audit log could not be loaded");
            }
        });
        let (appends, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(LogInner::writer(inner.clone(), queue));
        let scrubber = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SCRUB_INTERVAL).await;
                let Some(log) = scrubber.upgrade() else {
                    return;
                };
                if let Err(e) = log.scrub().await {
                    tracing::warn!(error = %e, "the audit store could not be re-verified");
                }
            }
        });
        Ok(Self { inner, appends })
    }

    /// Appends and returns the receipt once the store has committed it.
    pub async fn append(&self, draft: ReceiptDraft) -> Result<Appended, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.appends
            .send(Job::Append(draft, tx))
            .map_err(|_| StoreError::Unavailable)?;
        rx.await.map_err(|_| StoreError::Unavailable)?
    }

    /// Returns once every receipt queued before the call is committed (at
    /// shutdown, so that calls cut off by the grace period lose nothing
    /// they already handed to the log).
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.appends.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn origin(&self) -> &str {
        self.inner.origin()
    }

    /// The server keys of this log, with where each may sign.
    pub fn server_keys(&self) -> Arc<[PublishedKey]> {
        self.inner.keys.published()
    }

    pub fn keys(&self) -> &Arc<ServerKeys> {
        &self.inner.keys
    }

    /// The first disagreement found between the store and the tree, if any.
    pub fn integrity(&self) -> Option<IntegrityFailure> {
        self.inner.integrity()
    }

    /// Size and freshness, for `/metrics`.
    pub fn status(&self) -> &LogStatus {
        &self.inner.status
    }

    /// Re-derives every stored receipt and holds it against the tree the
    /// checkpoints sign, a page at a time so appends go on in between.
    /// Callers that arrive while one runs wait and share the next one, so a
    /// burst of callers costs at most two passes.
    pub async fn scrub(&self) -> Result<Option<IntegrityFailure>, StoreError> {
        self.inner.scrub().await
    }

    /// Retires the active server key at the log's current size, fixing the
    /// root it signed up to, and activates `next` from that size on (see
    /// [`crate::keyring`]). Appends racing it land before or after, never
    /// across. Returns the size.
    pub async fn rotate_key(&self, next: &KeyPair) -> Result<u64, StoreError> {
        let inner = &self.inner;
        // Each attempt loses only to a batch committed between reading the
        // log's size and taking its lock: a busy log may take a few.
        for _ in 0..64 {
            let mut state = inner.state.lock().await;
            inner.sync(&mut state).await?;
            let size = state.tree.len();
            let root = state.tree.root(size).ok_or(StoreError::Corrupt)?;
            let retiring = inner.keys.active_kid();
            let record = crate::keyring::record_for(next, size);
            match inner
                .store
                .rotate_key(&retiring, size, &hex::encode(root), &record)
                .await
            {
                Ok(()) => {
                    drop(state);
                    inner.keys.refresh(&inner.store).await?;
                    return Ok(size);
                }
                Err(StoreError::LogMoved) => continue,
                Err(StoreError::KeyRotated) => {
                    inner.keys.refresh(&inner.store).await?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::LogMoved)
    }

    /// A signed checkpoint of the log as it is now.
    pub async fn current_checkpoint(&self) -> Result<String, StoreError> {
        self.inner.current_checkpoint().await
    }

    /// Verifies a checkpoint note signed by this server.
    pub fn open_checkpoint(&self, note: &str) -> Result<VerifiedCheckpoint, CheckpointError> {
        self.inner.open_checkpoint(note)
    }

    /// Inclusion proof for `index` against the current tree, with its checkpoint.
    pub async fn prove_inclusion(&self, index: u64) -> Result<Option<LogProof>, StoreError> {
        self.inner.prove_inclusion(index).await
    }

    /// The tree's leaf hashes for `[from, to)` (fewer if the log is shorter).
    pub async fn leaves(&self, from: u64, to: u64) -> Result<Vec<merkle::Hash>, StoreError> {
        self.inner.leaves(from, to).await
    }

    /// Stored receipts from `from_seq`, at most `limit`.
    pub async fn receipts(&self, from_seq: u64, limit: u32) -> Result<Vec<Receipt>, StoreError> {
        self.inner.receipts(from_seq, limit).await
    }

    /// Consistency proof between two sizes of the current tree.
    pub async fn prove_consistency(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Option<Vec<merkle::Hash>>, StoreError> {
        self.inner.prove_consistency(old, new).await
    }

    /// Checks a receipt: hash and signature, then that the log holds it at
    /// its sequence number with an intact link to its predecessor, then its
    /// inclusion proof — the one given (against the checkpoint given) or a
    /// fresh one against the current checkpoint.
    pub async fn check(
        &self,
        receipt: &Receipt,
        proof: Option<&LogProof>,
    ) -> Result<Vec<(&'static str, Result<(), ReceiptCheckError>)>, StoreError> {
        self.inner.check(receipt, proof).await
    }

    /// Offline part of [`Self::check`]: the proof against its checkpoint.
    pub fn check_inclusion(
        &self,
        receipt: &Receipt,
        proof: &LogProof,
    ) -> Result<(), ReceiptCheckError> {
        self.inner.check_inclusion(receipt, proof)
    }
}

impl LogInner {
    /// The single writer: every draft queued while a commit is in flight
    /// goes into the next commit (group commit), and each caller is answered
    /// only once its receipt is durable.
    async fn writer(self: Arc<Self>, mut queue: tokio::sync::mpsc::UnboundedReceiver<Job>) {
        let mut flushes = Vec::new();
        while let Some(first) = queue.recv().await {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(job) = next {
                match job {
                    Job::Append(draft, waiter) => batch.push((draft, waiter)),
                    Job::Flush(done) => flushes.push(done),
                }
                next = queue.try_recv().ok();
            }
            if !batch.is_empty() {
                let mut state = self.state.lock().await;
                self.write_batch(&mut state, batch).await;
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }

    fn origin(&self) -> &str {
        self.keys.origin()
    }

    /// Brings the in-memory tree up to the store's newest receipt, deriving
    /// every leaf from the stored receipt bytes (never from the derived
    /// columns alone) and checking the hash chain; the newest receipt's
    /// signature covers the end of the chain. A disagreement is flagged and
    /// stops the log.
    async fn sync(&self, state: &mut LogState) -> Result<(), StoreError> {
        if self.integrity().is_some() {
            return Err(StoreError::Corrupt);
        }
        let mut newest = None;
        loop {
            let rows = self.store.log_rows(state.tree.len(), SYNC_PAGE).await?;
            if rows.is_empty() {
                break;
            }
            newest = self.integrate(state, &rows)?.or(newest);
        }
        self.status.size.store(state.tree.len(), Ordering::Relaxed);
        if let Some(receipt) = newest
            && receipt.check_signature(&self.keys.published()).is_err()
        {
            // A receipt by a key another process rotated to a moment ago is
            // checked against the registry as it is now before it is
            // doubted; a registry that cannot be read proves nothing.
            self.keys.refresh(&self.store).await?;
            if receipt.check_signature(&self.keys.published()).is_err() {
                return Err(self.flag(
                    receipt.body.seq,
                    "the newest receipt's signature does not verify",
                ));
            }
        }
        Ok(())
    }

    /// Adds stored rows that continue the tree to it: each leaf derived
    /// from the receipt bytes, each link of the chain checked; a
    /// disagreement is flagged. Returns the last receipt added.
    fn integrate(
        &self,
        state: &mut LogState,
        rows: &[LogRow],
    ) -> Result<Option<Receipt>, StoreError> {
        let mut chain = Chain::after(state.tree.len(), &state.last_hash);
        let mut newest = None;
        for row in rows {
            if row.seq != state.tree.len() {
                return Err(self.flag(state.tree.len(), "it is missing from the store"));
            }
            let (receipt, leaf) = derive_row(row).map_err(|problem| self.flag(row.seq, problem))?;
            chain.link(&receipt).map_err(|_| {
                self.flag(row.seq, "its prev is not the hash of the receipt before it")
            })?;
            state.tree.push(leaf);
            state.last_hash = chain.prev().to_string();
            newest = Some(receipt);
        }
        Ok(newest)
    }

    /// Seals `drafts` as the receipts continuing the tree, pushing their
    /// leaves: the stored rows and the receipts.
    fn seal(
        &self,
        state: &mut LogState,
        drafts: &[ReceiptDraft],
        signer: &KeyPair,
        now: u64,
    ) -> Result<(Vec<LogRow>, Vec<Receipt>), StoreError> {
        let base = state.tree.len();
        let mut rows = Vec::with_capacity(drafts.len());
        let mut receipts = Vec::with_capacity(drafts.len());
        for (i, draft) in drafts.iter().enumerate() {
            let body = ReceiptBody {
                kind: RECEIPT_TYPE.into(),
                seq: base + i as u64,
                prev: state.last_hash.clone(),
                ts_ms: now,
                kid: signer.kid().to_string(),
                subject: draft.subject.clone(),
                token_id: draft.token_id.clone(),
                transport: draft.transport.into(),
                tool: draft.tool.clone(),
                class: draft.class.map(String::from),
                scope: draft.scope.clone(),
                args_digest: draft.args_digest.clone(),
                lease: draft.lease.clone(),
                decision: draft.decision.unwrap_or(Decision::Error),
                reason: draft.reason.clone(),
                outcome: draft.outcome.clone(),
                trace_id: draft.trace_id.clone(),
            };
            let leaf = leaf_hash_of(&body).map_err(|_| StoreError::Corrupt)?;
            let receipt = Receipt::seal(body, signer).map_err(|_| StoreError::Corrupt)?;
            state.tree.push(leaf);
            state.last_hash.clone_from(&receipt.hash);
            rows.push(LogRow {
                seq: receipt.body.seq,
                hash: receipt.hash.clone(),
                leaf_hash: Some(hex::encode(leaf)),
                receipt: serde_json::to_string(&receipt).map_err(|_| StoreError::Corrupt)?,
                lease: receipt.body.lease.clone(),
            });
            receipts.push(receipt);
        }
        Ok((rows, receipts))
    }

    /// Records the first integrity failure, loudly.
    fn flag(&self, seq: u64, problem: &'static str) -> StoreError {
        let mut integrity = self.integrity.lock().unwrap_or_else(|e| e.into_inner());
        if integrity.is_none() {
            tracing::error!(
                seq,
                problem,
                "AUDIT STORE TAMPERED: the stored log no longer matches the log this server signed; no further receipts are appended"
            );
            *integrity = Some(IntegrityFailure { seq, problem });
        }
        StoreError::Corrupt
    }

    fn integrity(&self) -> Option<IntegrityFailure> {
        self.integrity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn scrub(&self) -> Result<Option<IntegrityFailure>, StoreError> {
        let arrived = std::time::Instant::now();
        let mut last_started = self.scrub.lock().await;
        if let Some(failure) = self.integrity() {
            return Ok(Some(failure));
        }
        if last_started.is_some_and(|started| started >= arrived) {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let mut seq = 0;
        loop {
            // The tree only grows, so leaves below a size read now stay put;
            // the lock is held only to read them, never while deriving.
            let size = self.state.lock().await.tree.len();
            if seq >= size {
                break;
            }
            let page = SYNC_PAGE.min(u32::try_from(size - seq).unwrap_or(SYNC_PAGE));
            let rows = self.store.log_rows(seq, page).await?;
            if rows.is_empty() {
                self.flag(seq, "it is missing from the store");
                return Ok(self.integrity());
            }
            let mut derived = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.seq != seq + derived.len() as u64 {
                    self.flag(seq + derived.len() as u64, "it is missing from the store");
                    return Ok(self.integrity());
                }
                match derive_row(row) {
                    Ok((_, leaf)) => derived.push(leaf),
                    Err(problem) => {
                        self.flag(row.seq, problem);
                        return Ok(self.integrity());
                    }
                }
            }
            let state = self.state.lock().await;
            for leaf in derived {
                if state.tree.leaf(seq) != Some(leaf) {
                    self.flag(
                        seq,
                        "its stored bytes no longer give the leaf the checkpoints sign",
                    );
                    return Ok(self.integrity());
                }
                seq += 1;
            }
        }
        *last_started = Some(started);
        Ok(None)
    }

    /// The stored receipt at `seq`, re-derived from its bytes and held
    /// against the tree; `Err(StoreMismatch)` (and the log flagged) when
    /// they no longer agree.
    async fn stored_receipt(
        &self,
        seq: u64,
    ) -> Result<Result<Option<Receipt>, ReceiptCheckError>, StoreError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state).await?;
        let Some(row) = self
            .store
            .log_rows(seq, 1)
            .await?
            .into_iter()
            .next()
            .filter(|r| r.seq == seq)
        else {
            return Ok(Ok(None));
        };
        match derive_row(&row) {
            Ok((receipt, leaf)) if state.tree.leaf(seq) == Some(leaf) => Ok(Ok(Some(receipt))),
            Ok(_) => {
                self.flag(
                    seq,
                    "its stored bytes no longer give the leaf the checkpoints sign",
                );
                Ok(Err(ReceiptCheckError::StoreMismatch))
            }
            Err(problem) => {
                self.flag(seq, problem);
                Ok(Err(ReceiptCheckError::StoreMismatch))
            }
        }
    }

    async fn write_batch(&self, state: &mut LogState, batch: Vec<(ReceiptDraft, Waiter)>) {
        let (drafts, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let result = self.commit(state, &drafts).await;
        match result {
            Ok(appended) => {
                for (waiter, item) in waiters.into_iter().zip(appended) {
                    let _ = waiter.send(Ok(item));
                }
            }
            Err(e) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(match e {
                        StoreError::Duplicate => StoreError::Duplicate,
                        StoreError::LogMoved => StoreError::LogMoved,
                        StoreError::KeyRotated => StoreError::KeyRotated,
                        StoreError::Corrupt => StoreError::Corrupt,
                        _ => StoreError::Unavailable,
                    }));
                }
            }
        }
    }

    async fn commit(
        &self,
        state: &mut LogState,
        drafts: &[ReceiptDraft],
    ) -> Result<Vec<Appended>, StoreError> {
        // A log whose store was tampered with is not signed over.
        if self.integrity().is_some() {
            return Err(StoreError::Corrupt);
        }
        let mut signer = self.keys.signing().map_err(|_| StoreError::KeyRotated)?;
        let leases: Vec<_> = drafts
            .iter()
            .filter_map(|d| d.consumed_lease.as_ref())
            .collect();
        for attempt in 0..APPEND_ATTEMPTS {
            // Only a writer far behind, or one whose view of the keys is
            // stale, comes round again: catch up outside the lock first.
            if attempt > 0 {
                self.sync(state).await?;
            }
            let (base, base_hash) = (state.tree.len(), state.last_hash.clone());
            let now = crate::now_unix_ms();
            let published = self.keys.published();
            // Sealed before the lock, on this writer's view of the log: what
            // the lock finds is nearly always that view.
            let (sealed_rows, mut receipts) = self.seal(state, drafts, &signer, now)?;
            let mut sealed_rows = Some(sealed_rows);
            // Under the store's lock: what other writers (replicas,
            // `dualtrust approve`) appended meanwhile joins the tree, and
            // the batch is sealed again after it, so it never loses to them.
            let mut build = |tail: &[LogRow]| {
                if tail.is_empty() {
                    return sealed_rows.take().ok_or(StoreError::Corrupt);
                }
                state.tree.truncate(base);
                state.last_hash.clone_from(&base_hash);
                if let Some(newest) = self.integrate(state, tail)?
                    && newest.check_signature(&published).is_err()
                {
                    // Perhaps signed by a key rotated to a moment ago:
                    // checked again, with the registry re-read, by `sync`.
                    return Err(StoreError::LogMoved);
                }
                let (rows, sealed) = self.seal(state, drafts, &signer, now)?;
                receipts = sealed;
                Ok(rows)
            };
            let appended = self
                .store
                // Catching up outside the lock lets the other writer go on
                // meanwhile; only a writer that keeps losing does it under.
                .append_receipts(
                    signer.kid(),
                    base,
                    attempt >= OPTIMISTIC_ATTEMPTS,
                    &mut build,
                    &leases,
                )
                .await;
            match appended {
                Ok(()) => {
                    let size = state.tree.len();
                    self.status.size.store(size, Ordering::Relaxed);
                    self.status.last_append_ms.store(now, Ordering::Relaxed);
                    let checkpoint = self
                        .checkpoint_note_by(&signer, &state.tree, size)
                        .ok_or(StoreError::Corrupt)?;
                    return receipts
                        .into_iter()
                        .map(|receipt| {
                            let index = receipt.body.seq;
                            let inclusion = state
                                .tree
                                .inclusion_proof(index, size)
                                .ok_or(StoreError::Corrupt)?
                                .iter()
                                .map(hex::encode)
                                .collect();
                            Ok(Appended {
                                receipt,
                                proof: LogProof {
                                    leaf_index: index,
                                    tree_size: size,
                                    inclusion,
                                    checkpoint: checkpoint.clone(),
                                },
                            })
                        })
                        .collect();
                }
                Err(e) => {
                    // Nothing was written; what was read under the lock is
                    // read again by the next sync.
                    state.tree.truncate(base);
                    state.last_hash = base_hash;
                    match e {
                        StoreError::LogMoved => {
                            // Two writers that collide would collide again
                            // in step; a short random pause breaks the step,
                            // and the calls queued meanwhile join the batch.
                            let mut jitter = [0u8; 2];
                            let _ = getrandom::getrandom(&mut jitter);
                            let cap_us = 1_000u64 << attempt.min(6);
                            let pause = u64::from(u16::from_le_bytes(jitter)) % cap_us;
                            tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
                        }
                        StoreError::KeyRotated => {
                            // Another process rotated the key: sign with the
                            // one the registry now names, if this one holds it.
                            self.keys.refresh(&self.store).await?;
                            signer = self.keys.signing().map_err(|_| StoreError::KeyRotated)?;
                        }
                        e => return Err(e),
                    }
                }
            }
        }
        Err(StoreError::LogMoved)
    }

    /// A checkpoint signed by the active key; `None` when this process no
    /// longer holds it (rotated away) or the size is past the tree.
    fn checkpoint_note(&self, tree: &MerkleTree, size: u64) -> Option<String> {
        let signer = self.keys.signing().ok()?;
        self.checkpoint_note_by(&signer, tree, size)
    }

    fn checkpoint_note_by(&self, signer: &KeyPair, tree: &MerkleTree, size: u64) -> Option<String> {
        let root = tree.root(size)?;
        Some(
            Checkpoint {
                origin: self.origin().to_string(),
                size,
                root,
                time: crate::now_unix(),
            }
            .sign(signer),
        )
    }

    async fn current_checkpoint(&self) -> Result<String, StoreError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state).await?;
        let size = state.tree.len();
        self.checkpoint_note(&state.tree, size)
            .ok_or(StoreError::Corrupt)
    }

    fn open_checkpoint(&self, note: &str) -> Result<VerifiedCheckpoint, CheckpointError> {
        Checkpoint::verify(note, self.origin(), &self.keys.published())
    }

    async fn prove_inclusion(&self, index: u64) -> Result<Option<LogProof>, StoreError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state).await?;
        let size = state.tree.len();
        let Some(path) = state.tree.inclusion_proof(index, size) else {
            return Ok(None);
        };
        let checkpoint = self
            .checkpoint_note(&state.tree, size)
            .ok_or(StoreError::Corrupt)?;
        Ok(Some(LogProof {
            leaf_index: index,
            tree_size: size,
            inclusion: path.iter().map(hex::encode).collect(),
            checkpoint,
        }))
    }

    async fn leaves(&self, from: u64, to: u64) -> Result<Vec<merkle::Hash>, StoreError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state).await?;
        Ok((from..to.min(state.tree.len()))
            .filter_map(|i| state.tree.leaf(i))
            .collect())
    }

    async fn receipts(&self, from_seq: u64, limit: u32) -> Result<Vec<Receipt>, StoreError> {
        stored_receipts(&self.store, from_seq, limit).await
    }

    async fn prove_consistency(
        &self,
        old: u64,
        new: u64,
    ) -> Result<Option<Vec<merkle::Hash>>, StoreError> {
        let mut state = self.state.lock().await;
        self.sync(&mut state).await?;
        Ok(state.tree.consistency_proof(old, new))
    }

    async fn check(
        &self,
        receipt: &Receipt,
        proof: Option<&LogProof>,
    ) -> Result<Vec<(&'static str, Result<(), ReceiptCheckError>)>, StoreError> {
        let mut checks = Vec::new();
        let signature = receipt.check_signature(&self.keys.published());
        let signature_ok = signature.is_ok();
        checks.push(("signature", signature));
        if !signature_ok {
            return Ok(checks);
        }
        let in_log = match self.stored_receipt(receipt.body.seq).await? {
            Err(e) => Err(e),
            Ok(None) => Err(ReceiptCheckError::NotInLog),
            Ok(Some(stored)) if stored != *receipt => Err(ReceiptCheckError::LogMismatch),
            Ok(Some(_)) => Ok(()),
        };
        let in_log_ok = in_log.is_ok();
        checks.push(("in_log", in_log));
        if !in_log_ok {
            return Ok(checks);
        }
        let chain = match receipt.body.seq.checked_sub(1) {
            None => Chain::genesis().link(receipt),
            Some(before) => match self.stored_receipt(before).await? {
                Err(e) => Err(e),
                Ok(Some(before)) => Chain::after(receipt.body.seq, &before.hash).link(receipt),
                Ok(None) => Err(ReceiptCheckError::ChainBroken),
            },
        };
        checks.push(("chain", chain));
        let fresh;
        let proof = match proof {
            Some(p) => p,
            None => match self.prove_inclusion(receipt.body.seq).await? {
                Some(p) => {
                    fresh = p;
                    &fresh
                }
                None => {
                    checks.push(("inclusion", Err(ReceiptCheckError::NotInLog)));
                    return Ok(checks);
                }
            },
        };
        checks.push(("inclusion", self.check_inclusion(receipt, proof)));
        Ok(checks)
    }

    fn check_inclusion(
        &self,
        receipt: &Receipt,
        proof: &LogProof,
    ) -> Result<(), ReceiptCheckError> {
        let checkpoint = self
            .open_checkpoint(&proof.checkpoint)
            .map_err(|_| ReceiptCheckError::CheckpointInvalid)?;
        verify_log_proof(receipt, proof, &checkpoint)
    }
}

/// Verifies `proof` for `receipt` against an already verified checkpoint.
pub fn verify_log_proof(
    receipt: &Receipt,
    proof: &LogProof,
    checkpoint: &VerifiedCheckpoint,
) -> Result<(), ReceiptCheckError> {
    if proof.tree_size != checkpoint.size || proof.leaf_index != receipt.body.seq {
        return Err(ReceiptCheckError::InclusionFailed);
    }
    let path: Option<Vec<merkle::Hash>> = proof
        .inclusion
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
        .collect();
    let path = path.ok_or(ReceiptCheckError::InclusionFailed)?;
    let leaf = leaf_hash_of(&receipt.body)?;
    if merkle::verify_inclusion(
        proof.leaf_index,
        proof.tree_size,
        &leaf,
        &path,
        &checkpoint.root,
    ) {
        Ok(())
    } else {
        Err(ReceiptCheckError::InclusionFailed)
    }
}

/// Verifies a whole exported log offline: every receipt's signature, the
/// sequence numbers and the chain; returns the RFC 6962 tree over it, so
/// callers can compare its heads with checkpoints they hold.
///
/// The per-receipt work (one RFC 8785 canonicalization, the SHA-256 hash
/// check, the Ed25519 signature, the leaf hash) is independent, so it runs
/// on every core; the sequence and chain checks and the tree are linear and
/// cheap. The error names the first bad receipt, as a sequential pass would.
pub fn verify_log(
    receipts: impl IntoIterator<Item = Receipt>,
    keys: &[PublishedKey],
) -> Result<MerkleTree, (u64, ReceiptCheckError)> {
    let receipts: Vec<Receipt> = receipts.into_iter().collect();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = receipts.len().div_ceil(threads).max(1);
    let checked: Vec<Result<merkle::Hash, ReceiptCheckError>> = std::thread::scope(|scope| {
        let workers: Vec<_> = receipts
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|r| r.check_and_hash(keys))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    if checked.len() != receipts.len() {
        // A worker panicked; nothing it checked can be trusted.
        return Err((0, ReceiptCheckError::NotInLog));
    }
    let mut chain = Chain::genesis();
    let mut tree = MerkleTree::new();
    for (index, (receipt, leaf)) in receipts.iter().zip(checked).enumerate() {
        let count = index as u64;
        if receipt.body.seq != count {
            return Err((count, ReceiptCheckError::NotInLog));
        }
        let leaf = leaf.map_err(|e| (count, e))?;
        chain.link(receipt).map_err(|e| (count, e))?;
        tree.push(leaf);
    }
    // What a retired key signed is fixed by the root it was retired at; a
    // log that disagrees was rewritten, by whoever held that key or not.
    for key in keys {
        if let (Some(until), Some(root)) = (key.until_seq, key.until_root)
            && until <= tree.len()
            && tree.root(until) != Some(root)
        {
            return Err((until, ReceiptCheckError::RetirementRoot));
        }
    }
    Ok(tree)
}

/// [`verify_log`], counting receipts.
pub fn verify_chain(
    receipts: impl IntoIterator<Item = Receipt>,
    keys: &[PublishedKey],
) -> Result<u64, (u64, ReceiptCheckError)> {
    verify_log(receipts, keys).map(|t| t.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64, prev: &str) -> ReceiptBody {
        ReceiptBody {
            kind: RECEIPT_TYPE.into(),
            seq,
            prev: prev.into(),
            ts_ms: 1,
            kid: String::new(),
            subject: Some("alice".into()),
            token_id: None,
            transport: "stdio".into(),
            tool: "db.query".into(),
            class: Some("read".into()),
            scope: Some("db:read".into()),
            args_digest: Some("00".into()),
            lease: None,
            decision: Decision::Allowed,
            reason: None,
            outcome: Some(serde_json::json!({"rows": 1, "é": "ü"})),
            trace_id: None,
        }
    }

    fn chain(key: &KeyPair, n: u64) -> Vec<Receipt> {
        let mut prev = GENESIS_PREV.to_string();
        (0..n)
            .map(|seq| {
                let mut b = body(seq, &prev);
                b.kid = key.kid().into();
                let r = Receipt::seal(b, key).expect("seal");
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn honest_chain_verifies_and_every_tamper_is_caught() {
        let key = KeyPair::generate().expect("key");
        let keys = vec![PublishedKey::unbounded(key.verifying_key())];
        let honest = chain(&key, 6);
        assert_eq!(verify_chain(honest.clone(), &keys), Ok(6));

        let mut edited = honest.clone();
        edited[3].body.subject = Some("mallory".into());
        assert_eq!(
            verify_chain(edited, &keys),
            Err((3, ReceiptCheckError::HashMismatch))
        );

        let mut deleted = honest.clone();
        deleted.remove(2);
        assert!(verify_chain(deleted, &keys).is_err());

        let mut reordered = honest.clone();
        reordered.swap(1, 2);
        assert!(verify_chain(reordered, &keys).is_err());

        let mut rehashed = honest.clone();
        rehashed[4].body.outcome = None;
        rehashed[4].hash = crate::sha256_hex(&canonical_bytes(&rehashed[4].body).expect("c"));
        assert_eq!(
            verify_chain(rehashed, &keys),
            Err((4, ReceiptCheckError::BadSignature))
        );

        let other = KeyPair::generate().expect("key");
        let other_keys = vec![PublishedKey {
            kid: key.kid().to_string(),
            ..PublishedKey::unbounded(other.verifying_key())
        }];
        assert_eq!(
            verify_chain(honest, &other_keys),
            Err((0, ReceiptCheckError::BadSignature))
        );
    }

    #[test]
    fn numbers_past_what_i_json_carries_exactly_are_not_signed() {
        let key = KeyPair::generate().expect("key");
        let mut body = chain(&key, 1).remove(0).body;
        body.ts_ms = 144_448_700_000_000_005;
        assert_eq!(
            Receipt::seal(body.clone(), &key).err(),
            Some(ReceiptCheckError::Canonicalization)
        );
        body.ts_ms = 1_700_000_000_000;
        body.outcome = Some(serde_json::json!({ "rows": [9_007_199_254_740_993u64] }));
        assert_eq!(
            Receipt::seal(body.clone(), &key).err(),
            Some(ReceiptCheckError::Canonicalization)
        );
        body.outcome = Some(serde_json::json!({ "rows": 9_007_199_254_740_991u64 }));
        assert!(Receipt::seal(body, &key).is_ok());
    }

    #[test]
    fn canonical_form_is_rfc8785() {
        // Keys sorted by UTF-16 code units, no whitespace, numbers in ES6 form.
        let v = serde_json::json!({"b": 1.0, "a": [true, null], "\u{e9}": "x"});
        let bytes = canonical_bytes(&v).expect("canonical");
        assert_eq!(
            String::from_utf8(bytes).expect("utf8"),
            "{\"a\":[true,null],\"b\":1,\"\u{e9}\":\"x\"}"
        );
    }
}
