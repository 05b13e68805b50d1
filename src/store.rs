//! The state store: leases, the receipt log, revoked token ids.
//!
//! One interface over `sqlx`. The embedded backend is SQLite (one file, WAL,
//! `synchronous = FULL` so a returned receipt is on disk). The interface
//! speaks in domain values only, so a PostgreSQL backend can sit beside it.
//! Every guarantee that matters (single-use leases, one linear log) is
//! enforced by a constraint or a compare-and-set in the database itself, not
//! by process memory, so it holds across restarts and processes.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::audit::Receipt;

const SQLITE_MIGRATIONS: &[(i64, &str)] =
    &[(1, include_str!("../migrations/sqlite/0001_init.sql"))];

/// Store failures. `Display` is safe to show a caller; the underlying
/// database error goes to the log only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or failed; the call fails closed.
    #[error("the state store is unavailable")]
    Unavailable,
    /// A concurrent writer won a uniqueness race.
    #[error("a concurrent write conflicted")]
    Conflict,
    /// A stored row does not parse: the store was edited outside dualtrust.
    #[error("the state store holds a corrupt record")]
    Corrupt,
}

fn unavailable(error: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &error
        && db.is_unique_violation()
    {
        return StoreError::Conflict;
    }
    tracing::error!(%error, "state store error");
    StoreError::Unavailable
}

/// A lease minted for one exact call.
#[derive(Debug, Clone)]
pub struct NewLease {
    pub id: String,
    pub subject: String,
    pub tool: String,
    pub args_digest: String,
    pub scope: String,
    pub issued_at: u64,
    pub expires_at: u64,
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
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

    async fn migrate(&self) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(pool)
        .await
        .map_err(unavailable)?;
        for (version, sql) in SQLITE_MIGRATIONS {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let done: Option<i64> =
                sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = ?")
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(unavailable)?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(*sql)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(to_i64(crate::now_unix()))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Records a lease for the exact call and consumes it in the same
    /// transaction, through the same compare-and-set a later redemption uses.
    pub async fn mint_and_consume_lease(
        &self,
        lease: &NewLease,
        now: u64,
    ) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let mut tx = pool.begin().await.map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO leases (id, subject, tool, args_digest, scope, issued_at, expires_at, state) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 'ready')",
        )
        .bind(&lease.id)
        .bind(&lease.subject)
        .bind(&lease.tool)
        .bind(&lease.args_digest)
        .bind(&lease.scope)
        .bind(to_i64(lease.issued_at))
        .bind(to_i64(lease.expires_at))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let consumed = Self::consume_in(
            &mut tx,
            &lease.id,
            &lease.subject,
            &lease.tool,
            &lease.args_digest,
            now,
        )
        .await?;
        if !consumed {
            return Err(StoreError::Conflict);
        }
        tx.commit().await.map_err(unavailable)
    }

    /// The single-use compare-and-set: true only for the one caller that
    /// moved this lease from `ready` to `consumed`, for its own subject,
    /// tool and argument digest, before expiry.
    async fn consume_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: &str,
        subject: &str,
        tool: &str,
        args_digest: &str,
        now: u64,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE leases SET state = 'consumed', consumed_at = ? \
             WHERE id = ? AND state = 'ready' AND subject = ? AND tool = ? AND args_digest = ? AND expires_at > ?",
        )
        .bind(to_i64(now))
        .bind(id)
        .bind(subject)
        .bind(tool)
        .bind(args_digest)
        .bind(to_i64(now))
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn lease_state(&self, id: &str) -> Result<Option<String>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        sqlx::query_scalar("SELECT state FROM leases WHERE id = ?")
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)
    }

    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let hit: Option<i64> = sqlx::query_scalar("SELECT 1 FROM revoked_tokens WHERE jti = ?")
            .bind(jti)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
        Ok(hit.is_some())
    }

    pub async fn revoke(&self, jti: &str, now: u64) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        sqlx::query("INSERT INTO revoked_tokens (jti, revoked_at) VALUES (?, ?) ON CONFLICT (jti) DO NOTHING")
            .bind(jti)
            .bind(to_i64(now))
            .execute(pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Sequence number and hash of the newest receipt.
    pub async fn log_head(&self) -> Result<Option<(u64, String)>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let seq: i64 = row.try_get("seq").map_err(|_| StoreError::Corrupt)?;
                let hash: String = row.try_get("hash").map_err(|_| StoreError::Corrupt)?;
                Ok(Some((
                    u64::try_from(seq).map_err(|_| StoreError::Corrupt)?,
                    hash,
                )))
            }
        }
    }

    pub async fn insert_receipt(&self, receipt: &Receipt) -> Result<(), StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let json = serde_json::to_string(receipt).map_err(|_| StoreError::Corrupt)?;
        sqlx::query("INSERT INTO audit_log (seq, hash, receipt) VALUES (?, ?, ?)")
            .bind(to_i64(receipt.body.seq))
            .bind(&receipt.hash)
            .bind(json)
            .execute(pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn receipt_at(&self, seq: u64) -> Result<Option<Receipt>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let json: Option<String> =
            sqlx::query_scalar("SELECT receipt FROM audit_log WHERE seq = ?")
                .bind(to_i64(seq))
                .fetch_optional(pool)
                .await
                .map_err(unavailable)?;
        json.map(|j| serde_json::from_str(&j).map_err(|_| StoreError::Corrupt))
            .transpose()
    }

    /// Receipts in log order from `from_seq`, at most `limit`.
    pub async fn receipts(&self, from_seq: u64, limit: u32) -> Result<Vec<Receipt>, StoreError> {
        let Backend::Sqlite(pool) = &self.backend;
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT receipt FROM audit_log WHERE seq >= ? ORDER BY seq LIMIT ?")
                .bind(to_i64(from_seq))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await
                .map_err(unavailable)?;
        rows.iter()
            .map(|j| serde_json::from_str(j).map_err(|_| StoreError::Corrupt))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str) -> NewLease {
        NewLease {
            id: id.into(),
            subject: "alice".into(),
            tool: "db.query".into(),
            args_digest: "d".into(),
            scope: "db:read".into(),
            issued_at: 100,
            expires_at: 200,
        }
    }

    #[tokio::test]
    async fn lease_is_consumed_once_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let store = Store::open_sqlite(&path).await.expect("open");
        store
            .mint_and_consume_lease(&lease("l1"), 150)
            .await
            .expect("first");
        assert!(matches!(
            store.mint_and_consume_lease(&lease("l1"), 150).await,
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            store.mint_and_consume_lease(&lease("expired"), 250).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            store.lease_state("expired").await.expect("q"),
            None,
            "rolled back"
        );
        drop(store);
        let store = Store::open_sqlite(&path).await.expect("reopen");
        assert_eq!(
            store.lease_state("l1").await.expect("q").as_deref(),
            Some("consumed")
        );
    }
}
