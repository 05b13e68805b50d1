//! The revocation list, served from memory so a call needs no store round
//! trip to learn that its token was not revoked.
//!
//! Staleness is bounded and fails closed: the list is reloaded every
//! `refresh` by the serving process; a check that finds it older than
//! twice that (the refresher is late, or none runs: the command line, unit
//! tests) reloads it first, and if the store cannot be read the call is
//! refused as unavailable, never let through. A revocation written by any
//! replica or the command line therefore takes effect everywhere within
//! `refresh`, and at worst twice that.
//!
//! Reloads are incremental: the rows revoked since the newest one seen,
//! minus an overlap that absorbs clock differences between the writers
//! (`revoked_at` is each writer's own clock), so a late-arriving row with
//! an older timestamp is still found.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError};

/// How often the list is reloaded unless configured
/// (`identity.revocation_refresh_ms`).
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);

/// How far back each reload re-reads, in seconds of `revoked_at`: writers'
/// clocks may differ by up to this much.
const CLOCK_OVERLAP_S: u64 = 300;

pub struct Revocations {
    state: RwLock<Loaded>,
    /// One reload at a time; checks that find the list stale wait for it.
    reloading: tokio::sync::Mutex<()>,
    refresh: Duration,
}

#[derive(Default)]
struct Loaded {
    revoked: HashSet<String>,
    /// The newest `revoked_at` seen.
    newest: u64,
    /// When the last reload succeeded; `None` before the first.
    at: Option<Instant>,
}

impl Revocations {
    pub fn new(refresh: Duration) -> Self {
        Self {
            state: RwLock::new(Loaded::default()),
            reloading: tokio::sync::Mutex::new(()),
            refresh,
        }
    }

    /// Whether `jti` is revoked, by a list at most twice `refresh` old.
    pub async fn is_revoked(&self, store: &Store, jti: &str) -> Result<bool, StoreError> {
        if let Some(answer) = self.fresh_answer(jti) {
            return Ok(answer);
        }
        let _turn = self.reloading.lock().await;
        // Another check may have reloaded while this one waited.
        if let Some(answer) = self.fresh_answer(jti) {
            return Ok(answer);
        }
        self.reload(store).await?;
        self.fresh_answer(jti).ok_or(StoreError::Unavailable)
    }

    fn fresh_answer(&self, jti: &str) -> Option<bool> {
        let loaded = self.state.read().ok()?;
        let fresh = loaded.at.is_some_and(|at| at.elapsed() <= 2 * self.refresh);
        fresh.then(|| loaded.revoked.contains(jti))
    }

    /// Reads what was revoked since the last reload (with the overlap).
    pub async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let since = self
            .state
            .read()
            .map(|l| l.newest.saturating_sub(CLOCK_OVERLAP_S))
            .unwrap_or(0);
        let started = Instant::now();
        let rows = store.revoked_since(since).await?;
        let mut loaded = self.state.write().map_err(|_| StoreError::Unavailable)?;
        for (jti, revoked_at) in rows {
            loaded.newest = loaded.newest.max(revoked_at);
            loaded.revoked.insert(jti);
        }
        // Fresh as of when the read began: a row committed during it may
        // be missing, and is found by the next reload.
        loaded.at = Some(started);
        Ok(())
    }

    /// Reloads every `refresh` until the process ends; a failure is logged
    /// and left to the fail-closed check.
    pub fn spawn_refresher(self: &Arc<Self>, store: Store) {
        let revocations = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(revocations.refresh);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let _turn = revocations.reloading.lock().await;
                if let Err(e) = revocations.reload(&store).await {
                    tracing::warn!(error = %e, "the revocation list could not be reloaded");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_revocation_is_seen_within_the_bound_and_an_unreadable_store_fails_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        let revocations = Revocations::new(Duration::from_millis(50));
        assert!(!revocations.is_revoked(&store, "a").await.expect("check"));
        // Written by another writer with a clock a minute behind: still found.
        let now = crate::now_unix();
        store.revoke("late", now - 60).await.expect("revoke");
        store.revoke("a", now).await.expect("revoke");
        // Served from memory until the bound passes...
        assert!(!revocations.is_revoked(&store, "a").await.expect("check"));
        tokio::time::sleep(Duration::from_millis(120)).await;
        // ...then reloaded before answering.
        assert!(revocations.is_revoked(&store, "a").await.expect("check"));
        assert!(revocations.is_revoked(&store, "late").await.expect("check"));
        assert_eq!(revocations.state.read().expect("lock").revoked.len(), 2);

        // The store stops answering (its table is gone): while the list is
        // fresh it still answers, then every check is refused, never
        // answered "not revoked".
        let raw =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
                .await
                .expect("second connection");
        sqlx::query("DROP TABLE revoked_tokens")
            .execute(&raw)
            .await
            .expect("drop");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(revocations.is_revoked(&store, "b").await.is_err());
    }
}
