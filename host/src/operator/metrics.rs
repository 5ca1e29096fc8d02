//! Operator metrics, exposed by `prometheus-client` in the OpenMetrics text format:
//! reconciles and errors by kind, policy call latency, API writes, leadership; and the
//! metrics of each Cluster ([`super::cluster_metrics`]). Served on `/metrics` next to
//! `/healthz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use kube::runtime::reflector::Store;
use pgwarden_crds::{Backup, Cluster};

use super::cluster_metrics::ClusterMetrics;

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the policy latency histogram: a decision takes tens to hundreds
/// of microseconds, a slow one milliseconds.
const BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabel {
    request: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabel {
    decision: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// All metrics of one operator process.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    writes: Family<RequestLabel, Counter>,
    /// The sum of `writes` (the families cannot be summed without encoding them).
    writes_total: AtomicU64,
    policy: Family<DecisionLabel, Histogram, fn() -> Histogram>,
    /// Whether this replica holds the Lease and reconciles (0 or 1).
    leading: Gauge,
    /// Each Cluster's series, read from the caches at each scrape.
    clusters: Arc<ClusterMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Metrics {
            registry: Registry::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            writes: Family::default(),
            writes_total: AtomicU64::new(0),
            policy: Family::new_with_constructor(latency_histogram),
            leading: Gauge::default(),
            clusters: Arc::default(),
        };
        let r = &mut metrics.registry;
        // Counters are registered without `_total`: the encoder adds it to the samples.
        r.register(
            "pgwarden_leader",
            "Whether this replica holds the Lease and reconciles.",
            metrics.leading.clone(),
        );
        r.register(
            "pgwarden_reconciles",
            "Reconciles run, by kind.",
            metrics.reconciles.clone(),
        );
        r.register(
            "pgwarden_reconcile_errors",
            "Failed reconciles, by kind and error.",
            metrics.errors.clone(),
        );
        r.register(
            "pgwarden_api_writes",
            "Write requests sent to the API server, by kind of request.",
            metrics.writes.clone(),
        );
        r.register(
            "pgwarden_policy_call_seconds",
            "Latency of policy decisions.",
            metrics.policy.clone(),
        );
        r.register_collector(Box::new(metrics.clusters.clone()));
        metrics
    }
}

impl Metrics {
    pub fn reconciled(&self, kind: &'static str) {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
    }

    pub fn failed(&self, kind: &'static str, label: &str) {
        let labels = ErrorLabels {
            kind,
            error: label.to_string(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    /// One write request to the API server (apply, delete, status patch, event).
    pub fn wrote(&self, request: &'static str) {
        self.writes.get_or_create(&RequestLabel { request }).inc();
        self.writes_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn writes_total(&self) -> u64 {
        self.writes_total.load(Ordering::Relaxed)
    }

    pub fn policy_call(&self, decision: &str, took: Duration) {
        let labels = DecisionLabel {
            decision: decision.to_string(),
        };
        self.policy
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn set_leading(&self, leading: bool) {
        self.leading.set(i64::from(leading));
    }

    pub fn is_leading(&self) -> bool {
        self.leading.get() == 1
    }

    /// Serves the series of the Clusters in these caches (the leader's) from now on.
    pub fn watch_clusters(&self, clusters: Store<Cluster>, backups: Store<Backup>) {
        self.clusters.watch(clusters, backups);
    }

    /// The OpenMetrics text exposition ([`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
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
        m.set_leading(true);
        let text = m.render();
        assert!(text.contains("pgwarden_reconciles_total{kind=\"Cluster\"} 2\n"));
        assert!(text.contains(
            "pgwarden_reconcile_errors_total{kind=\"Backup\",error=\"ClusterNotFound\"} 1\n"
        ));
        assert!(text.contains("pgwarden_api_writes_total{request=\"apply\"} 1\n"));
        assert!(
            text.contains(
                "pgwarden_policy_call_seconds_bucket{le=\"0.00025\",decision=\"instance-pod\"} 0\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "pgwarden_policy_call_seconds_bucket{le=\"0.0005\",decision=\"instance-pod\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("pgwarden_leader 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.writes_total(), 1);
        assert!(m.is_leading());
    }
}
