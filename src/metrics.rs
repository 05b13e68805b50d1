//! Counters and latency histograms, rendered in the Prometheus text
//! exposition format for `/metrics`.
//!
//! Labels come from fixed sets only (tool names, gate statuses, refusal
//! codes), never from request data, so a caller cannot grow the series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds of the approval-wait buckets, in seconds: people, not CPUs.
const WAIT_BUCKETS: [f64; 10] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0,
];

#[derive(Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    fn with_bounds(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if seconds <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

#[derive(Default)]
pub struct Metrics {
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    latency: Mutex<BTreeMap<&'static str, Histogram>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    approvals: Mutex<BTreeMap<&'static str, u64>>,
    quorum_wait: Mutex<Option<Histogram>>,
    pub leases_issued: AtomicU64,
    pub leases_redeemed: AtomicU64,
    pub auth_throttled: AtomicU64,
    /// Shared with the accept loop, which counts what it closes unread.
    pub connections_refused: std::sync::Arc<AtomicU64>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut map = match map.lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    *map.entry(key).or_default() += 1;
}

fn snapshot<K: Ord + Clone, V: Clone>(map: &Mutex<BTreeMap<K, V>>) -> BTreeMap<K, V> {
    match map.lock() {
        Ok(m) => m.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

impl Metrics {
    /// One tool call through the gate: its status and how long it took.
    pub fn record_call(&self, tool: &'static str, status: &'static str, elapsed: Duration) {
        self.count_call(tool, status);
        let mut latency = match self.latency.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        latency
            .entry(tool)
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    /// A call decided without running through the gate's timed pipeline
    /// (the HTTP scope challenge): counted, but no latency is invented.
    pub fn count_call(&self, tool: &'static str, status: &'static str) {
        bump(&self.calls, (tool, status));
    }

    /// A refusal by the gate, by its code.
    pub fn record_refusal(&self, code: &'static str) {
        bump(&self.refusals, code);
    }

    pub fn record_auth_failure(&self, reason: &'static str) {
        bump(&self.auth_failures, reason);
    }

    /// An approval submission, by result (`accepted` or an error code).
    pub fn record_approval(&self, result: &'static str) {
        bump(&self.approvals, result);
    }

    /// A held call reached its quorum `seconds` after it was held.
    pub fn record_quorum_wait(&self, seconds: f64) {
        let mut wait = self.quorum_wait.lock().unwrap_or_else(|e| e.into_inner());
        wait.get_or_insert_with(|| Histogram::with_bounds(&WAIT_BUCKETS))
            .observe(seconds);
    }

    /// The Prometheus text exposition (version 0.0.4).
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        counter(
            &mut out,
            "dualtrust_tool_calls_total",
            "Tool calls through the gate, by tool and outcome status.",
        );
        for ((tool, status), n) in snapshot(&self.calls) {
            let _ = writeln!(
                out,
                "dualtrust_tool_calls_total{{tool=\"{tool}\",status=\"{status}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "dualtrust_gate_refusals_total",
            "Calls the gate refused, by reason code.",
        );
        for (code, n) in snapshot(&self.refusals) {
            let _ = writeln!(
                out,
                "dualtrust_gate_refusals_total{{reason=\"{code}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "dualtrust_auth_failures_total",
            "Rejected bearer tokens, by reason.",
        );
        for (reason, n) in snapshot(&self.auth_failures) {
            let _ = writeln!(
                out,
                "dualtrust_auth_failures_total{{reason=\"{reason}\"}} {n}"
            );
        }
        counter(
            &mut out,
            "dualtrust_approvals_total",
            "Approval submissions, by result.",
        );
        for (result, n) in snapshot(&self.approvals) {
            let _ = writeln!(out, "dualtrust_approvals_total{{result=\"{result}\"}} {n}");
        }
        let plain = [
            (
                "dualtrust_leases_issued_total",
                "Leases issued for later redemption (held or explicit).",
                self.leases_issued.load(Ordering::Relaxed),
            ),
            (
                "dualtrust_leases_redeemed_total",
                "Issued leases redeemed by a call that ran.",
                self.leases_redeemed.load(Ordering::Relaxed),
            ),
            (
                "dualtrust_auth_throttled_total",
                "HTTP requests answered 429 because their address failed authentication too often.",
                self.auth_throttled.load(Ordering::Relaxed),
            ),
            (
                "dualtrust_http_connections_refused_total",
                "HTTP connections closed unread: the total or per-address connection limit was reached.",
                self.connections_refused.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in plain
            .iter()
            .map(|(n, h, v)| (*n, *h, *v))
            .chain(extra.iter().copied())
        {
            counter(&mut out, name, help);
            let _ = writeln!(out, "{name} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP dualtrust_tool_call_duration_seconds Time from a call entering the gate to its receipt.\n# TYPE dualtrust_tool_call_duration_seconds histogram"
        );
        for (tool, h) in snapshot(&self.latency) {
            h.render(
                &mut out,
                "dualtrust_tool_call_duration_seconds",
                &format!("tool=\"{tool}\","),
            );
        }
        let _ = writeln!(
            out,
            "# HELP dualtrust_approval_quorum_seconds Time from a call being held to its quorum of approvals.\n# TYPE dualtrust_approval_quorum_seconds histogram"
        );
        let wait = self
            .quorum_wait
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_else(|| Histogram::with_bounds(&WAIT_BUCKETS));
        wait.render(&mut out, "dualtrust_approval_quorum_seconds", "");
        out
    }
}

/// A gauge in the text exposition: its help, its type, its value now.
pub fn render_gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

impl Histogram {
    /// The bucket, sum and count lines; `labels` ends in a comma when set.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter()) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
        }
        let bare = labels.trim_end_matches(',');
        let bare = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}le=\"+Inf\"}} {}\n{name}_sum{bare} {}\n{name}_count{bare} {}",
            self.count, self.sum, self.count
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.record_call("db.query", "ok", Duration::from_millis(3));
        m.record_call("db.query", "ok", Duration::from_millis(30));
        m.record_refusal("insufficient_scope");
        let text = m.render(&[]);
        assert!(text.contains("dualtrust_tool_calls_total{tool=\"db.query\",status=\"ok\"} 2"));
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("le=\"0.05\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text.contains("dualtrust_gate_refusals_total{reason=\"insufficient_scope\"} 1"));
        m.count_call("db.query", "denied");
        let text = m.render(&[]);
        assert!(text.contains("dualtrust_tool_calls_total{tool=\"db.query\",status=\"denied\"} 1"));
        assert!(
            text.contains("dualtrust_tool_call_duration_seconds_count{tool=\"db.query\"} 2"),
            "no latency sample for a call that was only counted: {text}"
        );
        m.record_quorum_wait(40.0);
        let text = m.render(&[]);
        assert!(
            text.contains("dualtrust_approval_quorum_seconds_bucket{le=\"30\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("dualtrust_approval_quorum_seconds_bucket{le=\"60\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("dualtrust_approval_quorum_seconds_count 1"),
            "{text}"
        );
    }
}
