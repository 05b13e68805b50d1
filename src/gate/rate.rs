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

use crate::config::LimitsConfig;

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
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_per_subject_and_per_tool() {
        let config = LimitsConfig {
            calls_per_minute: 5,
            tool_calls_per_minute: [("terminal.execute".to_string(), 2)].into(),
            auth_failures_per_minute: 1,
            approvals_per_minute: 2,
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
