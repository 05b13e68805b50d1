//! Rate limits (GCRA, via `governor`): per subject, per subject and tool,
//! and per client address for failed HTTP authentication.
//!
//! Keyed state is bounded: once a limiter tracks more keys than
//! [`MAX_TRACKED_KEYS`], keys whose buckets have refilled are dropped, so a
//! stream of fresh subjects or addresses cannot grow memory without bound.

use std::collections::BTreeMap;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{LimitsBackend, LimitsConfig, LimitsFallback};
use crate::store::Store;

const MAX_TRACKED_KEYS: usize = 10_000;

/// One keyed per-minute limit.
pub struct KeyedLimit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    /// `None` when `per_minute` is zero (no limit).
    pub fn per_minute(per_minute: u32) -> Option<Self> {
        NonZeroU32::new(per_minute).map(|n| Self {
            limiter: RateLimiter::keyed(Quota::per_minute(n)),
        })
    }

    /// `Err(retry_after)` when `key` is over its limit.
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        if self.limiter.len() > MAX_TRACKED_KEYS {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The gate's limits on tool calls.
pub struct CallLimits {
    per_subject: Option<KeyedLimit<String>>,
    per_tool: BTreeMap<String, KeyedLimit<String>>,
    per_approver: Option<KeyedLimit<String>>,
    /// The same budgets kept in the shared store, when configured.
    shared: Option<SharedBudgets>,
}

/// Per-minute budgets kept outside the replica, one for every replica.
struct SharedBudgets {
    calls_per_minute: u32,
    tool_calls_per_minute: BTreeMap<String, u32>,
    access: SharedAccess,
}

/// A shared limits backend and what happens when it cannot be asked.
struct SharedAccess {
    fallback: LimitsFallback,
    timeout: Duration,
    backend: SharedBackend,
    /// After a failure the backend is not asked again until then (unix
    /// ms), so an outage costs calls one timeout per interval, not each.
    retry_at_ms: std::sync::atomic::AtomicU64,
}

impl SharedAccess {
    fn new(config: &LimitsConfig) -> Option<Self> {
        Some(Self {
            fallback: config.on_backend_failure,
            timeout: Duration::from_millis(config.backend_timeout_ms),
            backend: shared_backend(&config.backend)?,
            retry_at_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Runs `ask` against the backend within the timeout; `None` when the
    /// backend failed (or failed a moment ago), and the fallback decides.
    async fn ask<T, F>(&self, ask: F) -> Option<T>
    where
        F: std::future::Future<Output = Result<T, String>>,
    {
        use std::sync::atomic::Ordering::Relaxed;
        let now_ms = crate::now_unix_ms();
        if now_ms < self.retry_at_ms.load(Relaxed) {
            return None;
        }
        match tokio::time::timeout(self.timeout, ask).await {
            Ok(Ok(answer)) => Some(answer),
            outcome => {
                let error = match outcome {
                    Ok(Err(error)) => error,
                    _ => "timed out".into(),
                };
                tracing::warn!(%error, "the shared limits backend could not be read");
                self.retry_at_ms
                    .store(now_ms + RETRY_BACKEND_AFTER_MS, Relaxed);
                None
            }
        }
    }
}

/// How long a failed shared backend is left alone.
const RETRY_BACKEND_AFTER_MS: u64 = 1_000;

enum SharedBackend {
    Store,
    Redis(Box<RedisBuckets>),
    /// A backend that could not be set up: every check fails, and the
    /// fallback decides (never silently unlimited).
    Broken(String),
}

/// A concurrency cap in Redis: one sorted set per subject of the slots
/// held, each scored by when it lapses (a replica that died holding one
/// frees it then); taken atomically, on Redis's clock. 1: taken, 0: full.
const SLOT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// GCRA in Redis: one Lua script per call, atomic on the server, on the
/// server's clock (replicas' clocks may differ). Returns 0 when allowed,
/// else the milliseconds until it would be; a refused call changes nothing.
const GCRA_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new = tat + interval
if new - burst > now then return new - burst - now end
redis.call('SET', KEYS[1], new, 'PX', new - now)
return 0
";

struct RedisBuckets {
    client: redis::Client,
    script: redis::Script,
    slots: redis::Script,
    /// Connected on first use (Redis may be down when the server starts);
    /// the manager reconnects by itself afterwards.
    connection: tokio::sync::OnceCell<redis::aio::ConnectionManager>,
}

impl RedisBuckets {
    fn new(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            script: redis::Script::new(GCRA_LUA),
            slots: redis::Script::new(SLOT_LUA),
            connection: tokio::sync::OnceCell::new(),
        })
    }

    async fn connection(&self) -> Result<redis::aio::ConnectionManager, String> {
        Ok(self
            .connection
            .get_or_try_init(|| redis::aio::ConnectionManager::new(self.client.clone()))
            .await
            .map_err(|e| e.to_string())?
            .clone())
    }

    async fn take_slot(
        &self,
        subject: &str,
        id: &str,
        max: usize,
        lifetime_ms: u64,
    ) -> Result<bool, String> {
        let mut connection = self.connection().await?;
        let taken: i64 = self
            .slots
            .key(format!("dualtrust:slots:{subject}"))
            .arg(max)
            .arg(lifetime_ms)
            .arg(id)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(taken == 1)
    }

    async fn release_slot(&self, subject: &str, id: &str) -> Result<(), String> {
        let mut connection = self.connection().await?;
        redis::cmd("ZREM")
            .arg(format!("dualtrust:slots:{subject}"))
            .arg(id)
            .query_async::<i64>(&mut connection)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn take(
        &self,
        key: &str,
        interval_ms: u64,
        burst_ms: u64,
    ) -> Result<Option<u64>, String> {
        let mut connection = self.connection().await?;
        let wait_ms: i64 = self
            .script
            .key(format!("dualtrust:rate:{key}"))
            .arg(interval_ms)
            .arg(burst_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(u64::try_from(wait_ms).ok().filter(|w| *w > 0))
    }
}

/// Why a call may not run now.
#[derive(Debug, PartialEq, Eq)]
pub enum Limited {
    /// Over budget: retry after this long.
    Wait(Duration),
    /// The shared budget cannot be read, and the configured answer is no.
    Unavailable,
}

/// The shared backend a configuration names (a Redis URL that does not
/// parse is refused when the configuration loads).
fn shared_backend(backend: &LimitsBackend) -> Option<SharedBackend> {
    match backend {
        LimitsBackend::Local => None,
        LimitsBackend::Store => Some(SharedBackend::Store),
        LimitsBackend::Redis(url) => Some(match RedisBuckets::new(url.expose()) {
            Ok(redis) => SharedBackend::Redis(Box::new(redis)),
            Err(e) => SharedBackend::Broken(e.to_string()),
        }),
    }
}

/// GCRA over a minute: one arrival per `60 000 / n` ms, `n` in a burst.
fn per_minute_bucket(n: u32) -> (u64, u64) {
    let interval_ms = (60_000 / u64::from(n)).max(1);
    (interval_ms, interval_ms * u64::from(n))
}

impl CallLimits {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            per_subject: KeyedLimit::per_minute(config.calls_per_minute),
            per_tool: config
                .tool_calls_per_minute
                .iter()
                .filter_map(|(tool, n)| KeyedLimit::per_minute(*n).map(|l| (tool.clone(), l)))
                .collect(),
            per_approver: KeyedLimit::per_minute(config.approvals_per_minute),
            shared: SharedAccess::new(config).map(|access| SharedBudgets {
                calls_per_minute: config.calls_per_minute,
                tool_calls_per_minute: config.tool_calls_per_minute.clone(),
                access,
            }),
        }
    }

    /// Whether `subject` may call `tool` now, against the shared budget
    /// when there is one (falling back as configured when the store cannot
    /// be reached), else this replica's own.
    pub async fn take(&self, store: &Store, subject: &str, tool: &str) -> Result<(), Limited> {
        let Some(shared) = &self.shared else {
            return self.check(subject, tool).map_err(Limited::Wait);
        };
        let now_ms = crate::now_unix_ms();
        let fallback = || match shared.access.fallback {
            LimitsFallback::Local => self.check(subject, tool).map_err(Limited::Wait),
            LimitsFallback::Closed => Err(Limited::Unavailable),
        };
        let mut buckets = Vec::with_capacity(2);
        if let Some(n) = shared.tool_calls_per_minute.get(tool).filter(|n| **n > 0) {
            buckets.push((format!("tool\u{1f}{tool}\u{1f}{subject}"), *n));
        }
        if shared.calls_per_minute > 0 {
            buckets.push((format!("calls\u{1f}{subject}"), shared.calls_per_minute));
        }
        for (key, n) in buckets {
            let (interval_ms, burst_ms) = per_minute_bucket(n);
            let taken = shared
                .access
                .ask(async {
                    match &shared.access.backend {
                        SharedBackend::Store => store
                            .take_rate(&key, now_ms, interval_ms, burst_ms)
                            .await
                            .map_err(|e| e.to_string()),
                        SharedBackend::Redis(redis) => {
                            redis.take(&key, interval_ms, burst_ms).await
                        }
                        SharedBackend::Broken(why) => Err(why.clone()),
                    }
                })
                .await;
            match taken {
                Some(None) => {}
                Some(Some(wait_ms)) => {
                    return Err(Limited::Wait(Duration::from_millis(wait_ms)));
                }
                None => return fallback(),
            }
        }
        Ok(())
    }

    /// `Err(retry_after)` when `submitter` has submitted too many approvals
    /// or rejections this minute.
    pub fn check_approver(&self, submitter: &str) -> Result<(), Duration> {
        match &self.per_approver {
            Some(limit) => limit.check(&submitter.to_string()),
            None => Ok(()),
        }
    }

    /// `Err(retry_after)` when `subject` may not call `tool` now.
    pub fn check(&self, subject: &str, tool: &str) -> Result<(), Duration> {
        let key = subject.to_string();
        if let Some(limit) = self.per_tool.get(tool) {
            limit.check(&key)?;
        }
        if let Some(limit) = &self.per_subject {
            limit.check(&key)?;
        }
        Ok(())
    }
}

/// A per-subject concurrency cap (the terminal's) kept in the shared
/// limits backend, so N replicas hold one cap between them. Each slot
/// lapses after `lifetime_ms` (longer than any command may run), so one a
/// dead replica held frees itself.
pub struct SharedSlots {
    access: SharedAccess,
    store: Store,
    lifetime_ms: u64,
}

/// The answer for one slot.
#[derive(Debug, PartialEq, Eq)]
pub enum SlotAnswer {
    /// Taken in the shared backend; release it with this id.
    Taken(String),
    /// The subject holds the cap already, across every replica.
    Full,
    /// The backend cannot be asked and the configured answer is no.
    Unavailable,
    /// The backend cannot be asked; this replica's own count decides.
    Local,
}

impl SharedSlots {
    /// `None` when the limits are local (each replica its own count).
    pub fn new(config: &LimitsConfig, store: Store, lifetime_ms: u64) -> Option<Self> {
        Some(Self {
            access: SharedAccess::new(config)?,
            store,
            lifetime_ms,
        })
    }

    pub async fn take(&self, subject: &str, max: usize) -> SlotAnswer {
        let Ok(id) = crate::random_id() else {
            return SlotAnswer::Unavailable;
        };
        let taken = self
            .access
            .ask(async {
                match &self.access.backend {
                    SharedBackend::Store => {
                        let now = crate::now_unix_ms();
                        self.store
                            .take_slot(subject, &id, max, now, now + self.lifetime_ms)
                            .await
                            .map_err(|e| e.to_string())
                    }
                    SharedBackend::Redis(redis) => {
                        redis.take_slot(subject, &id, max, self.lifetime_ms).await
                    }
                    SharedBackend::Broken(why) => Err(why.clone()),
                }
            })
            .await;
        match taken {
            Some(true) => SlotAnswer::Taken(id),
            Some(false) => SlotAnswer::Full,
            None => {
                // A take that timed out may still have landed: give it back.
                self.release(subject, &id).await;
                match self.access.fallback {
                    LimitsFallback::Closed => SlotAnswer::Unavailable,
                    LimitsFallback::Local => SlotAnswer::Local,
                }
            }
        }
    }

    /// Gives a taken slot back; if the backend cannot be reached now, the
    /// slot lapses at the end of its lifetime.
    pub async fn release(&self, subject: &str, id: &str) {
        let released = tokio::time::timeout(self.access.timeout, async {
            match &self.access.backend {
                SharedBackend::Store => {
                    self.store.release_slot(id).await.map_err(|e| e.to_string())
                }
                SharedBackend::Redis(redis) => redis.release_slot(subject, id).await,
                SharedBackend::Broken(why) => Err(why.clone()),
            }
        })
        .await;
        if !matches!(released, Ok(Ok(()))) {
            tracing::warn!("a terminal slot could not be released; it lapses by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared budget's store gone: refused (`closed`) or this replica's
    /// own budget (`local`), as configured; never unlimited.
    #[tokio::test]
    async fn an_unreachable_shared_budget_fails_as_configured() {
        let database = crate::store::TempPgDatabase::create().await;
        let store = Store::open_postgres(&database.url, 2).await.expect("open");
        let limits = |fallback| {
            CallLimits::new(&LimitsConfig {
                calls_per_minute: 2,
                tool_calls_per_minute: BTreeMap::new(),
                backend: LimitsBackend::Store,
                on_backend_failure: fallback,
                ..LimitsConfig::default()
            })
        };
        let (closed, local) = (
            limits(LimitsFallback::Closed),
            limits(LimitsFallback::Local),
        );
        assert_eq!(closed.take(&store, "alice", "db.query").await, Ok(()));
        // The store goes away under the running limits (a closed
        // `take` that still succeeded would fail the next assertion).
        database.remove().await;
        assert_eq!(
            closed.take(&store, "alice", "db.query").await,
            Err(Limited::Unavailable)
        );
        assert_eq!(local.take(&store, "alice", "db.query").await, Ok(()));
        assert_eq!(local.take(&store, "alice", "db.query").await, Ok(()));
        assert!(matches!(
            local.take(&store, "alice", "db.query").await,
            Err(Limited::Wait(_))
        ));
    }

    /// The terminal's cap in Redis (the machine's): one cap for two
    /// "replicas" racing; a released slot is free again; Redis away is
    /// answered as configured.
    #[tokio::test]
    async fn shared_slots_hold_one_cap_in_redis_and_fail_as_configured() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite(&dir.path().join("s.db"))
            .await
            .expect("store");
        let config = |url: &str, fallback| LimitsConfig {
            backend: LimitsBackend::try_from(url.to_string()).expect("url"),
            on_backend_failure: fallback,
            ..LimitsConfig::default()
        };
        let up = config("redis://127.0.0.1:6379", LimitsFallback::Closed);
        let replicas = [
            std::sync::Arc::new(SharedSlots::new(&up, store.clone(), 60_000).expect("shared")),
            std::sync::Arc::new(SharedSlots::new(&up, store.clone(), 60_000).expect("shared")),
        ];
        let subject = format!("test-{}", crate::random_id().expect("id"));
        let takes = (0..20).map(|i| {
            let (slots, subject) = (replicas[i % 2].clone(), subject.clone());
            tokio::spawn(async move { slots.take(&subject, 3).await })
        });
        let answers: Vec<SlotAnswer> = futures_util::future::join_all(takes)
            .await
            .into_iter()
            .map(|a| a.expect("task"))
            .collect();
        let taken: Vec<&String> = answers
            .iter()
            .filter_map(|a| match a {
                SlotAnswer::Taken(id) => Some(id),
                _ => None,
            })
            .collect();
        assert_eq!(taken.len(), 3, "{answers:?}");
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, SlotAnswer::Taken(_) | SlotAnswer::Full))
        );
        replicas[1].release(&subject, taken[0]).await;
        assert!(matches!(
            replicas[0].take(&subject, 3).await,
            SlotAnswer::Taken(_)
        ));
        assert_eq!(replicas[0].take(&subject, 3).await, SlotAnswer::Full);

        let down = |fallback| {
            SharedSlots::new(
                &config("redis://127.0.0.1:1", fallback),
                store.clone(),
                60_000,
            )
            .expect("shared")
        };
        assert_eq!(
            down(LimitsFallback::Closed).take("a", 3).await,
            SlotAnswer::Unavailable
        );
        assert_eq!(
            down(LimitsFallback::Local).take("a", 3).await,
            SlotAnswer::Local
        );
    }

    #[test]
    fn limits_are_per_subject_and_per_tool() {
        let config = LimitsConfig {
            calls_per_minute: 5,
            tool_calls_per_minute: [("terminal.execute".to_string(), 2)].into(),
            auth_failures_per_minute: 1,
            approvals_per_minute: 2,
            ..LimitsConfig::default()
        };
        let limits = CallLimits::new(&config);
        assert!(limits.check_approver("alice").is_ok());
        assert!(limits.check_approver("alice").is_ok());
        assert!(limits.check_approver("alice").is_err(), "per approver");
        assert!(limits.check_approver("bob").is_ok());
        assert!(limits.check("alice", "terminal.execute").is_ok());
        assert!(limits.check("alice", "terminal.execute").is_ok());
        let retry = limits
            .check("alice", "terminal.execute")
            .expect_err("third terminal call");
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(30));
        assert!(
            limits.check("bob", "terminal.execute").is_ok(),
            "bob has his own bucket"
        );
        // alice's subject-wide budget: 2 used, 3 left.
        for _ in 0..3 {
            assert!(limits.check("alice", "db.query").is_ok());
        }
        assert!(limits.check("alice", "db.query").is_err());
        assert!(
            KeyedLimit::<String>::per_minute(0).is_none(),
            "zero means off"
        );
    }
}
