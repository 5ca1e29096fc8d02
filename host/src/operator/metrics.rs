//! Operator metrics in the Prometheus text format: reconciles and errors by kind, policy
//! call latency, API writes. Served on `/metrics` next to `/healthz`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the policy latency histogram.
const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

/// All counters of one operator process.
#[derive(Default)]
pub struct Metrics {
    reconciles: Mutex<BTreeMap<&'static str, u64>>,
    errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    writes: Mutex<BTreeMap<&'static str, u64>>,
    policy: Mutex<BTreeMap<String, Histogram>>,
    /// Whether this replica holds the Lease and reconciles.
    leading: AtomicBool,
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str) {
        *self.reconciles.lock().unwrap().entry(kind).or_default() += 1;
    }

    pub fn failed(&self, kind: &'static str, label: &str) {
        *self
            .errors
            .lock()
            .unwrap()
            .entry((kind, label.to_string()))
            .or_default() += 1;
    }

    /// One write request to the API server (apply, delete, status patch, event).
    pub fn wrote(&self, kind: &'static str) {
        *self.writes.lock().unwrap().entry(kind).or_default() += 1;
    }

    pub fn writes_total(&self) -> u64 {
        self.writes.lock().unwrap().values().sum()
    }

    pub fn policy_call(&self, decision: &str, took: Duration) {
        let mut policy = self.policy.lock().unwrap();
        let h = policy.entry(decision.to_string()).or_default();
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::Relaxed);
    }

    pub fn is_leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP pgwarden_leader Whether this replica holds the Lease and reconciles.\n# TYPE pgwarden_leader gauge\npgwarden_leader {}",
            u8::from(self.is_leading())
        );
        out.push_str("# HELP pgwarden_reconciles_total Reconciles run, by kind.\n# TYPE pgwarden_reconciles_total counter\n");
        for (kind, n) in self.reconciles.lock().unwrap().iter() {
            let _ = writeln!(out, "pgwarden_reconciles_total{{kind=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP pgwarden_reconcile_errors_total Failed reconciles, by kind and error.\n# TYPE pgwarden_reconcile_errors_total counter\n");
        for ((kind, error), n) in self.errors.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "pgwarden_reconcile_errors_total{{kind=\"{kind}\",error=\"{error}\"}} {n}"
            );
        }
        out.push_str("# HELP pgwarden_api_writes_total Write requests sent to the API server, by kind of request.\n# TYPE pgwarden_api_writes_total counter\n");
        for (kind, n) in self.writes.lock().unwrap().iter() {
            let _ = writeln!(out, "pgwarden_api_writes_total{{request=\"{kind}\"}} {n}");
        }
        out.push_str("# HELP pgwarden_policy_call_seconds Latency of policy decisions.\n# TYPE pgwarden_policy_call_seconds histogram\n");
        for (decision, h) in self.policy.lock().unwrap().iter() {
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "pgwarden_policy_call_seconds_bucket{{decision=\"{decision}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "pgwarden_policy_call_seconds_bucket{{decision=\"{decision}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "pgwarden_policy_call_seconds_sum{{decision=\"{decision}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "pgwarden_policy_call_seconds_count{{decision=\"{decision}\"}} {}",
                h.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::default();
        m.reconciled("Cluster");
        m.reconciled("Cluster");
        m.failed("Backup", "ClusterNotFound");
        m.wrote("apply");
        m.policy_call("instance-pod", Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains("pgwarden_reconciles_total{kind=\"Cluster\"} 2"));
        assert!(text.contains(
            "pgwarden_reconcile_errors_total{kind=\"Backup\",error=\"ClusterNotFound\"} 1"
        ));
        assert!(text.contains("pgwarden_api_writes_total{request=\"apply\"} 1"));
        assert!(text.contains(
            "pgwarden_policy_call_seconds_bucket{decision=\"instance-pod\",le=\"0.00025\"} 0"
        ));
        assert!(text.contains(
            "pgwarden_policy_call_seconds_bucket{decision=\"instance-pod\",le=\"0.0005\"} 1"
        ));
        assert_eq!(m.writes_total(), 1);
    }
}
