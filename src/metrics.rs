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

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bound, count) in BUCKETS.iter().zip(self.counts.iter_mut()) {
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
            for (bound, count) in BUCKETS.iter().zip(h.counts.iter()) {
                let _ = writeln!(
                    out,
                    "dualtrust_tool_call_duration_seconds_bucket{{tool=\"{tool}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "dualtrust_tool_call_duration_seconds_bucket{{tool=\"{tool}\",le=\"+Inf\"}} {}\ndualtrust_tool_call_duration_seconds_sum{{tool=\"{tool}\"}} {}\ndualtrust_tool_call_duration_seconds_count{{tool=\"{tool}\"}} {}",
                h.count, h.sum, h.count
            );
        }
        out
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
    }
}
