//! The state store: leases, the receipt log, revoked token ids.
//!
//! One interface over `sqlx`, two backends: SQLite, embedded (one file, WAL,
//! `synchronous = FULL` so a returned receipt is on disk), and PostgreSQL,
//! shared by several replicas. The statements are the same text for both
//! (placeholders rewritten per backend); the interface speaks in domain
//! values only.
//! Every guarantee that matters (single-use leases, one linear log) is
//! enforced by a constraint or a compare-and-set in the database itself, not
//! by process memory, so it holds across restarts and processes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::StoreTarget;

const SQLITE_MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_init.sql")),
    (2, include_str!("../migrations/sqlite/0002_quorum.sql")),
    (3, include_str!("../migrations/sqlite/0003_merkle.sql")),
];

const POSTGRES_MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../migrations/postgres/0001_init.sql"))];

/// Store failures. `Display` is safe to show a caller; the underlying
/// database error goes to the log only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or failed; the call fails closed.
    #[error("the state store is unavailable")]
    Unavailable,
    /// The row exists already (an approver approving twice, a lease id
    /// used twice): retrying cannot help.
    #[error("the record exists already")]
    Duplicate,
    /// Another writer (a replica, `dualtrust approve`) appended to the log
    /// first: re-read the log and rebuild the batch.
    #[error("another writer appended to the log first")]
    LogMoved,
    /// A stored row does not parse: the store was edited outside dualtrust.
    #[error("the state store holds a corrupt record")]
    Corrupt,
    /// The subject already holds the maximum number of open leases.
    #[error("too many open leases for this subject; redeem or let some expire first")]
    TooManyOpenLeases,
}

fn unavailable(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        return StoreError::Duplicate;
    }
    tracing::error!(%error, "state store error");
    StoreError::Unavailable
}

/// Where a lease is in its life. Only `ready`/`pending_approval` can be consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    PendingApproval,
    Ready,
    Consumed,
    Expired,
    Revoked,
}

impl LeaseState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingApproval => "pending_approval",
            Self::Ready => "ready",
            Self::Consumed => "consumed",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending_approval" => Self::PendingApproval,
            "ready" => Self::Ready,
            "consumed" => Self::Consumed,
            "expired" => Self::Expired,
            "revoked" => Self::Revoked,
            _ => return None,
        })
    }
}

/// One stored receipt as the store holds it, derived columns included. The
/// store does not interpret the receipt: the audit log writes and reads it.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub seq: u64,
    /// The `hash` column (the receipt's hash when it was written).
    pub hash: String,
    /// The RFC 6962 leaf hash column; empty in logs written before it existed.
    pub leaf_hash: String,
    /// The receipt's JSON, the bytes everything else derives from.
    pub receipt: String,
}

/// The newest receipt of the log: its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    pub seq: u64,
    pub hash: String,
}

/// A lease for one exact call: (subject, tool, argument digest) until expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: String,
    pub subject: String,
    pub tool: String,
    pub args_digest: String,
    pub scope: String,
    pub issued_at: u64,
    pub expires_at: u64,
    pub state: LeaseState,
    /// What the call does, for approvers.
    pub summary: String,
    /// The canonical arguments, for approvers to read.
    pub args_json: String,
    /// Approvals needed; 0 for an explicit lease without quorum.
    pub quorum_k: u32,
}

/// An approval as stored: the signature is checked again at every use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    pub approver_id: String,
    pub signature: String,
    pub signed_at: u64,
}

fn lease_from_row<R>(row: &R) -> Result<Lease, StoreError>
where
    R: Row,
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let get_u64 = |name: &str| -> Result<u64, StoreError> {
        let v: i64 = row.try_get(name).map_err(|_| StoreError::Corrupt)?;
        u64::try_from(v).map_err(|_| StoreError::Corrupt)
    };
    let get_str = |name: &str| -> Result<String, StoreError> {
        row.try_get(name).map_err(|_| StoreError::Corrupt)
    };
    Ok(Lease {
        id: get_str("id")?,
        subject: get_str("subject")?,
        tool: get_str("tool")?,
        args_digest: get_str("args_digest")?,
        scope: get_str("scope")?,
        issued_at: get_u64("issued_at")?,
        expires_at: get_u64("expires_at")?,
        state: LeaseState::parse(&get_str("state")?).ok_or(StoreError::Corrupt)?,
        summary: get_str("summary")?,
        args_json: get_str("args_json")?,
        quorum_k: u32::try_from(get_u64("quorum_k")?).map_err(|_| StoreError::Corrupt)?,
    })
}

// A macro so that the column list is part of each statement's constant text.
macro_rules! lease_columns {
    () => {
        "id, subject, tool, args_digest, scope, issued_at, expires_at, state, summary, args_json, quorum_k"
    };
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` once per backend with `$pool` bound to that backend's pool
/// and `$pg` telling [`sql`] which placeholders to write. The body is the
/// same text for both, type-checked against each driver.
macro_rules! on_backend {
    ($store:expr, $pool:ident, $pg:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => {
                let $pg = false;
                $body
            }
            Backend::Postgres($pool) => {
                let $pg = true;
                $body
            }
        }
    };
}

/// Our own statement text (never caller input) with the backend's
/// placeholders: `?` for SQLite, `$1`, `$2`… for PostgreSQL.
fn sql(pg: bool, text: &'static str) -> sqlx::AssertSqlSafe<String> {
    if !pg {
        return sqlx::AssertSqlSafe(text.to_string());
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut n = 0;
    for c in text.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    sqlx::AssertSqlSafe(out)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt)
}

/// Key of the PostgreSQL advisory lock that serializes log appends and
/// migrations across replicas ("dualtrst" in ASCII).
const LOG_LOCK_KEY: i64 = 0x6475_616c_7472_7374;

/// The single-use compare-and-set: only the one caller that moves this
/// lease to `consumed`, for its own subject, tool and argument digest,
/// before expiry, changes a row. Quorum is checked by the gate before it
/// calls this; approvals can only be added, never withdrawn.
const CONSUME_LEASE: &str = "UPDATE leases SET state = 'consumed', consumed_at = ? \
     WHERE id = ? AND state IN ('ready', 'pending_approval') AND subject = ? AND tool = ? AND args_digest = ? AND expires_at > ?";

/// A transaction that will write. SQLite: `BEGIN IMMEDIATE`, so that the
/// write lock is taken (waiting up to the busy timeout) before the first
/// read; a deferred transaction that reads and then writes fails at once
/// with SQLITE_BUSY when another connection is writing.
macro_rules! begin_write {
    ($pool:expr, $pg:expr) => {
        if $pg {
            $pool.begin().await
        } else {
            $pool.begin_with("BEGIN IMMEDIATE").await
        }
        .map_err(unavailable)
    };
}

/// Inserts one lease inside the open transaction `$tx` of either backend.
macro_rules! insert_lease {
    ($pg:expr, $lease:expr, $tx:ident) => {{
        let lease: &Lease = $lease;
        sqlx::query(sql(
            $pg,
            "INSERT INTO leases (id, subject, tool, args_digest, scope, issued_at, expires_at, state, summary, args_json, quorum_k, consumed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ))
        .bind(&lease.id)
        .bind(&lease.subject)
        .bind(&lease.tool)
        .bind(&lease.args_digest)
        .bind(&lease.scope)
        .bind(to_i64(lease.issued_at))
        .bind(to_i64(lease.expires_at))
        .bind(lease.state.as_str())
        .bind(&lease.summary)
        .bind(&lease.args_json)
        .bind(i64::from(lease.quorum_k))
        // A lease stored already consumed was minted and used at once.
        .bind((lease.state == LeaseState::Consumed).then(|| to_i64(lease.issued_at)))
        .execute(&mut *$tx)
        .await
        .map(|_| ())
        .map_err(unavailable)
    }};
}

macro_rules! consume_lease {
    ($pg:expr, $executor:expr, $id:expr, $subject:expr, $tool:expr, $digest:expr, $now:expr) => {
        sqlx::query(sql($pg, CONSUME_LEASE))
            .bind(to_i64($now))
            .bind($id)
            .bind($subject)
            .bind($tool)
            .bind($digest)
            .bind(to_i64($now))
            .execute($executor)
            .await
            .map_err(unavailable)
            .map(|r| r.rows_affected() == 1)
    };
}

impl Store {
    /// Opens the store named by `target`, creating and migrating it.
    pub async fn open(target: &StoreTarget) -> Result<Self, StoreError> {
        match target {
            StoreTarget::Sqlite(path) => Self::open_sqlite(path).await,
            StoreTarget::Postgres {
                url,
                max_connections,
            } => Self::open_postgres(url.expose(), *max_connections).await,
        }
    }

    /// Opens (creating if missing) the SQLite store at `path` and migrates it.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(unavailable)?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        let store = Self {
            backend: Backend::Sqlite(pool),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to a PostgreSQL store shared by replicas and migrates it
    /// (under an advisory lock, so replicas starting together agree).
    pub async fn open_postgres(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // A connection broken while PostgreSQL was away is replaced,
            // not handed to the next call.
            .test_before_acquire(true)
            .connect(url)
            .await
            .map_err(unavailable)?;
        let store = Self {
            backend: Backend::Postgres(pool),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        on_backend!(self, pool, pg => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            if pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(LOG_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            sqlx::raw_sql(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            let migrations = if pg { POSTGRES_MIGRATIONS } else { SQLITE_MIGRATIONS };
            for (version, text) in migrations {
                let done: Option<i64> =
                    sqlx::query_scalar(sql(pg, "SELECT version FROM schema_migrations WHERE version = ?"))
                        .bind(version)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                if done.is_some() {
                    continue;
                }
                sqlx::raw_sql(*text)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
                sqlx::query(sql(pg, "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)"))
                    .bind(version)
                    .bind(to_i64(crate::now_unix()))
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        on_backend!(self, pool, _pg => {
            sqlx::query("SELECT 1")
                .execute(pool)
                .await
                .map_err(unavailable)?;
        });
        Ok(())
    }

    /// Issues a lease for later redemption, unless the subject already holds
    /// `max_open` unexpired, unconsumed leases.
    pub async fn issue_lease(
        &self,
        lease: &Lease,
        max_open: u32,
        now: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, pool, pg => {
            let mut tx = begin_write!(pool, pg)?;
            let open: i64 = sqlx::query_scalar(sql(
                pg,
                "SELECT count(*) FROM leases WHERE subject = ? AND state IN ('pending_approval', 'ready') AND expires_at > ?",
            ))
            .bind(&lease.subject)
            .bind(to_i64(now))
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
            if open >= i64::from(max_open) {
                return Err(StoreError::TooManyOpenLeases);
            }
            insert_lease!(pg, lease, tx)?;
            tx.commit().await.map_err(unavailable)
        })
    }

    /// Redeems an issued lease: true only for the single caller that moves
    /// it to `consumed`, for its own subject, tool and digest, before expiry.
    pub async fn consume_lease(
        &self,
        id: &str,
        subject: &str,
        tool: &str,
        args_digest: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        on_backend!(self, pool, pg => {
            consume_lease!(pg, pool, id, subject, tool, args_digest, now)
        })
    }

    pub async fn lease(&self, id: &str) -> Result<Option<Lease>, StoreError> {
        on_backend!(self, pool, pg => {
            let row = sqlx::query(sql(pg, concat!(
                "SELECT ",
                lease_columns!(),
                " FROM leases WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
            row.as_ref().map(lease_from_row).transpose()
        })
    }

    /// Leases waiting for approval and not yet expired, oldest first.
    pub async fn pending_leases(&self, now: u64) -> Result<Vec<Lease>, StoreError> {
        on_backend!(self, pool, pg => {
            let rows = sqlx::query(sql(pg, concat!(
                "SELECT ",
                lease_columns!(),
                " FROM leases WHERE state = 'pending_approval' AND expires_at > ? ORDER BY issued_at"
            )))
            .bind(to_i64(now))
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
            rows.iter().map(lease_from_row).collect()
        })
    }

    /// Stores an approval; a second one by the same approver is a conflict.
    pub async fn record_approval(
        &self,
        lease_id: &str,
        approver_id: &str,
        signature: &str,
        now: u64,
    ) -> Result<(), StoreError> {
        on_backend!(self, pool, pg => {
            sqlx::query(sql(pg, "INSERT INTO approvals (lease_id, approver_id, signature, signed_at) VALUES (?, ?, ?, ?)"))
                .bind(lease_id)
                .bind(approver_id)
                .bind(signature)
                .bind(to_i64(now))
                .execute(pool)
                .await
                .map_err(unavailable)?;
        });
        Ok(())
    }

    pub async fn approvals(&self, lease_id: &str) -> Result<Vec<StoredApproval>, StoreError> {
        on_backend!(self, pool, pg => {
            let rows: Vec<(String, String, i64)> = sqlx::query_as(sql(pg, "SELECT approver_id, signature, signed_at FROM approvals WHERE lease_id = ? ORDER BY signed_at, approver_id"))
                .bind(lease_id)
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(approver_id, signature, signed_at)| {
                    Ok(StoredApproval {
                        approver_id,
                        signature,
                        signed_at: to_u64(signed_at)?,
                    })
                })
                .collect()
        })
    }

    pub async fn lease_state(&self, id: &str) -> Result<Option<String>, StoreError> {
        on_backend!(self, pool, pg => {
            sqlx::query_scalar(sql(pg, "SELECT state FROM leases WHERE id = ?"))
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(unavailable)
        })
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        on_backend!(self, pool, pg => {
            let hits: i64 = sqlx::query_scalar(sql(pg, "SELECT count(*) FROM revoked_tokens WHERE jti = ?"))
                .bind(jti)
                .fetch_one(pool)
                .await
                .map_err(unavailable)?;
            Ok(hits > 0)
        })
    }

    pub async fn revoke(&self, jti: &str, now: u64) -> Result<(), StoreError> {
        on_backend!(self, pool, pg => {
            sqlx::query(sql(pg, "INSERT INTO revoked_tokens (jti, revoked_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING"))
                .bind(jti)
                .bind(to_i64(now))
                .execute(pool)
                .await
                .map_err(unavailable)?;
        });
        Ok(())
    }

    /// The newest receipt's place: `None` for an empty log.
    pub async fn log_head(&self) -> Result<Option<LogHead>, StoreError> {
        on_backend!(self, pool, _pg => {
            let row: Option<(i64, String)> =
                sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
            row.map(|(seq, hash)| Ok(LogHead { seq: to_u64(seq)?, hash }))
                .transpose()
        })
    }

    /// Appends receipts (with their RFC 6962 leaf hashes), and stores the
    /// already-consumed leases of the ordinary calls they record, in one
    /// transaction: all become durable together or none does. The batch
    /// must continue the log exactly where the store's log ends; otherwise
    /// another writer got there first and this is a conflict (the caller
    /// re-reads the log and rebuilds the batch). On PostgreSQL the check and
    /// the inserts run under an advisory lock shared by all replicas.
    pub async fn insert_receipts(
        &self,
        batch: &[LogRow],
        consumed_leases: &[&Lease],
    ) -> Result<(), StoreError> {
        let Some(first) = batch.first() else {
            return Ok(());
        };
        on_backend!(self, pool, pg => {
            let mut tx = begin_write!(pool, pg)?;
            if pg {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(LOG_LOCK_KEY)
                    .execute(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            }
            let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq) + 1, 0) FROM audit_log")
                .fetch_one(&mut *tx)
                .await
                .map_err(unavailable)?;
            if next != to_i64(first.seq) {
                return Err(StoreError::LogMoved);
            }
            for lease in consumed_leases {
                insert_lease!(pg, lease, tx)?;
            }
            for row in batch {
                sqlx::query(sql(pg, "INSERT INTO audit_log (seq, hash, receipt, leaf_hash) VALUES (?, ?, ?, ?)"))
                    .bind(to_i64(row.seq))
                    .bind(&row.hash)
                    .bind(&row.receipt)
                    .bind(&row.leaf_hash)
                    .execute(&mut *tx)
                    .await
                    // Under the lock a taken seq cannot happen; if it does,
                    // another writer was there first.
                    .map_err(|e| match unavailable(e) {
                        StoreError::Duplicate => StoreError::LogMoved,
                        other => other,
                    })?;
            }
            tx.commit().await.map_err(unavailable)
        })
    }

    /// The stored rows of the log from `from_seq` on, in order, at most
    /// `limit`: what the log re-verifies its tree against.
    pub async fn log_rows(&self, from_seq: u64, limit: u32) -> Result<Vec<LogRow>, StoreError> {
        on_backend!(self, pool, pg => {
            let rows: Vec<(i64, String, String, String)> = sqlx::query_as(sql(
                pg,
                "SELECT seq, hash, leaf_hash, receipt FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT ?",
            ))
            .bind(to_i64(from_seq))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(unavailable)?;
            rows.into_iter()
                .map(|(seq, hash, leaf_hash, receipt)| {
                    Ok(LogRow { seq: to_u64(seq)?, hash, leaf_hash, receipt })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str) -> Lease {
        Lease {
            id: id.into(),
            subject: "alice".into(),
            tool: "db.query".into(),
            args_digest: "d".into(),
            scope: "db:read".into(),
            issued_at: 100,
            expires_at: 200,
            state: LeaseState::Ready,
            summary: String::new(),
            args_json: "{}".into(),
            quorum_k: 0,
        }
    }

    fn consumed_draft(lease_id: &str) -> crate::audit::ReceiptDraft {
        crate::audit::ReceiptDraft {
            tool: "db.query".into(),
            lease: Some(lease_id.into()),
            consumed_lease: Some(Lease {
                state: LeaseState::Consumed,
                ..lease(lease_id)
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_ordinary_lease_is_stored_consumed_with_its_receipt_once_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = Store::open_sqlite(&path).await.expect("open");
        let key = std::sync::Arc::new(crate::keys::KeyPair::generate().expect("key"));
        let log = crate::audit::AuditLog::open(store.clone(), key.clone())
            .await
            .expect("log");
        log.append(consumed_draft("l1")).await.expect("first");
        // The same lease again: the whole batch fails at once, the receipt
        // with it (a duplicate is not retried as if the log had moved).
        assert!(matches!(
            log.append(consumed_draft("l1")).await,
            Err(StoreError::Duplicate)
        ));
        assert_eq!(
            store.log_head().await.expect("head").map(|h| h.seq),
            Some(0)
        );
        // A consumed lease cannot be redeemed.
        assert!(
            !store
                .consume_lease("l1", "alice", "db.query", "d", 150)
                .await
                .expect("consume")
        );
        drop(log);
        drop(store);
        let store = Store::open_sqlite(&path).await.expect("reopen");
        assert_eq!(
            store.lease_state("l1").await.expect("q").as_deref(),
            Some("consumed")
        );
        assert_eq!(
            store.log_head().await.expect("head").map(|h| h.seq),
            Some(0)
        );
    }
}
