//! Metrics per Cluster, labelled `namespace` and `cluster` (and `instance` for replication
//! lag): WAL archiving, the last backup, the first recoverability point.
//!
//! Read at each scrape from the operator's caches of Clusters and Backups, which hold what
//! the agents report in their status: nothing is kept between scrapes, so a deleted Cluster's
//! series are gone from the next scrape, and one scrape of the operator covers every Cluster
//! with no network path to the instance pods. Only the leader has the caches (a standby
//! serves no Cluster series, so two replicas never report the same Cluster twice). The values
//! are as fresh as the agents' last report (`status.archive.reportedAt`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use chrono::DateTime;
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use pgwarden_crds::{ArchiveStatus, Backup, BackupPhase, Cluster};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    namespace: String,
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    namespace: String,
    cluster: String,
    instance: String,
}

/// The caches the series are read from, set once this replica leads.
#[derive(Clone)]
struct Source {
    clusters: Store<Cluster>,
    backups: Store<Backup>,
}

/// The collector registered in the operator's registry; empty until [`Self::watch`].
#[derive(Default)]
pub struct ClusterMetrics {
    source: OnceLock<Source>,
}

impl fmt::Debug for ClusterMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterMetrics")
            .field("watching", &self.source.get().is_some())
            .finish()
    }
}

impl ClusterMetrics {
    /// Reports the Clusters of these caches from now on.
    pub fn watch(&self, clusters: Store<Cluster>, backups: Store<Backup>) {
        let _ = self.source.set(Source { clusters, backups });
    }
}

/// How a series is typed: counters get `_total` from the encoder.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

/// One family of per-Cluster series: its value for a Cluster (and its newest completed
/// Backup), `None` when the status does not say.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    value: fn(&Cluster, Option<&Backup>) -> Option<f64>,
}

fn archive(c: &Cluster) -> Option<&ArchiveStatus> {
    c.status.as_ref()?.archive.as_ref()
}

/// Seconds since the epoch of an RFC 3339 time.
fn seconds(time: Option<&str>) -> Option<f64> {
    let t = DateTime::parse_from_rfc3339(time?).ok()?;
    Some(t.timestamp_millis() as f64 / 1000.0)
}

fn stopped(b: Option<&Backup>) -> Option<f64> {
    seconds(b?.status.as_ref()?.stopped_at.as_deref())
}

fn started(b: Option<&Backup>) -> Option<f64> {
    seconds(b?.status.as_ref()?.started_at.as_deref())
}

const FAMILIES: &[Family] = &[
    Family {
        name: "pgwarden_cluster_instances",
        help: "Instances the Cluster asks for (spec.instances); every Cluster has this series.",
        kind: Kind::Gauge,
        value: |c, _| Some(f64::from(c.spec.instances)),
    },
    Family {
        name: "pgwarden_cluster_ready_instances",
        help: "Instance pods that are ready (status.readyInstances).",
        kind: Kind::Gauge,
        value: |c, _| Some(f64::from(c.status.as_ref()?.ready_instances?)),
    },
    Family {
        name: "pgwarden_cluster_wal_ready_segments",
        help: "WAL segments waiting to be archived (.ready files), as the primary's agent last reported.",
        kind: Kind::Gauge,
        value: |c, _| Some(archive(c)?.ready_segments? as f64),
    },
    Family {
        name: "pgwarden_cluster_wal_oldest_ready_age_seconds",
        help: "Age of the oldest WAL segment waiting to be archived, when the agent last reported.",
        kind: Kind::Gauge,
        value: |c, _| Some(archive(c)?.oldest_ready_age_seconds? as f64),
    },
    Family {
        name: "pgwarden_cluster_wal_archived",
        help: "WAL segments archived (pg_stat_archiver.archived_count of the primary; resets when it restarts).",
        kind: Kind::Counter,
        value: |c, _| Some(archive(c)?.archived_count? as f64),
    },
    Family {
        name: "pgwarden_cluster_wal_archive_failures",
        help: "Failed WAL archiving attempts (pg_stat_archiver.failed_count of the primary; resets when it restarts).",
        kind: Kind::Counter,
        value: |c, _| Some(archive(c)?.failed_count? as f64),
    },
    Family {
        name: "pgwarden_cluster_wal_last_archived_timestamp_seconds",
        help: "When the last WAL segment was archived (Unix time).",
        kind: Kind::Gauge,
        value: |c, _| seconds(archive(c)?.last_archived_time.as_deref()),
    },
    Family {
        name: "pgwarden_cluster_wal_last_failed_timestamp_seconds",
        help: "When WAL archiving last failed (Unix time).",
        kind: Kind::Gauge,
        value: |c, _| seconds(archive(c)?.last_failed_time.as_deref()),
    },
    Family {
        name: "pgwarden_cluster_archive_reported_timestamp_seconds",
        help: "When the primary's agent last reported the archiving facts (Unix time).",
        kind: Kind::Gauge,
        value: |c, _| seconds(archive(c)?.reported_at.as_deref()),
    },
    Family {
        name: "pgwarden_cluster_last_backup_timestamp_seconds",
        help: "When the newest completed Backup stopped (its status.stoppedAt, Unix time).",
        kind: Kind::Gauge,
        value: |_, b| stopped(b),
    },
    Family {
        name: "pgwarden_cluster_last_backup_duration_seconds",
        help: "How long the newest completed Backup took (stoppedAt - startedAt).",
        kind: Kind::Gauge,
        value: |_, b| Some(stopped(b)? - started(b)?),
    },
    Family {
        name: "pgwarden_cluster_last_backup_size_bytes",
        help: "Size of the newest completed Backup, as barman reported (status.sizeBytes: the cluster size at its start for barman-cloud-backup).",
        kind: Kind::Gauge,
        value: |_, b| Some(b?.status.as_ref()?.size_bytes? as f64),
    },
    Family {
        name: "pgwarden_cluster_first_recoverability_point_timestamp_seconds",
        help: "The earliest point in time the Cluster can be restored to (Unix time).",
        kind: Kind::Gauge,
        value: |c, _| seconds(c.status.as_ref()?.first_recoverability_point.as_deref()),
    },
];

/// Per-instance families: a standby's lag as its agent reported it.
type Lag = fn(&pgwarden_crds::InstanceStatus) -> Option<i64>;

const LAG: [(&str, &str, Lag); 2] = [
    (
        "pgwarden_cluster_replication_lag_bytes",
        "Bytes of WAL a standby received but has not replayed.",
        |i| i.lag_bytes,
    ),
    (
        "pgwarden_cluster_replication_lag_seconds",
        "Seconds since the last transaction a standby replayed was committed on the primary (0 when caught up).",
        |i| i.lag_seconds,
    ),
];

/// The newest completed Backup of each Cluster, by `stoppedAt` (RFC 3339 UTC sorts as text).
fn newest_backup<'a>(cluster: &Cluster, backups: &'a [Arc<Backup>]) -> Option<&'a Backup> {
    backups
        .iter()
        .filter(|b| b.namespace() == cluster.namespace())
        .filter(|b| b.spec.cluster.name == cluster.name_any())
        .filter(|b| {
            let status = b.status.as_ref();
            status.and_then(|s| s.phase) == Some(BackupPhase::Completed)
                && status.and_then(|s| s.stopped_at.as_ref()).is_some()
        })
        .max_by(|a, b| {
            let at = |b: &Backup| b.status.as_ref().and_then(|s| s.stopped_at.clone());
            at(a).cmp(&at(b))
        })
        .map(|b| &**b)
}

fn labels(c: &Cluster) -> ClusterLabels {
    ClusterLabels {
        namespace: c.namespace().unwrap_or_default(),
        cluster: c.name_any(),
    }
}

fn encode_value(
    kind: Kind,
    value: f64,
    encoder: prometheus_client::encoding::MetricEncoder<'_>,
) -> fmt::Result {
    match kind {
        Kind::Gauge => ConstGauge::new(value).encode(encoder),
        Kind::Counter => ConstCounter::new(value.max(0.0) as u64).encode(encoder),
    }
}

/// Encodes the series of `clusters` (sorted by namespace and name, for a stable output).
fn encode_clusters(
    clusters: &[Arc<Cluster>],
    backups: &[Arc<Backup>],
    mut encoder: DescriptorEncoder<'_>,
) -> fmt::Result {
    let mut clusters: Vec<&Cluster> = clusters.iter().map(|c| &**c).collect();
    clusters.sort_by_key(|c| (c.namespace(), c.name_any()));
    let newest: Vec<Option<&Backup>> = clusters.iter().map(|c| newest_backup(c, backups)).collect();
    for family in FAMILIES {
        let metric_type = match family.kind {
            Kind::Gauge => MetricType::Gauge,
            Kind::Counter => MetricType::Counter,
        };
        let mut metric = encoder.encode_descriptor(family.name, family.help, None, metric_type)?;
        for (c, backup) in clusters.iter().zip(&newest) {
            if let Some(v) = (family.value)(c, *backup) {
                let labels = labels(c);
                encode_value(family.kind, v, metric.encode_family(&labels)?)?;
            }
        }
    }
    for (name, help, value) in LAG {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for c in &clusters {
            let instances = c.status.iter().flat_map(|s| &s.instances_status);
            // A standby's lag: the primary reports its own WAL as both received and replayed.
            for i in instances.filter(|i| i.in_recovery == Some(true)) {
                let Some(v) = value(i) else { continue };
                let labels = InstanceLabels {
                    namespace: c.namespace().unwrap_or_default(),
                    cluster: c.name_any(),
                    instance: i.name.clone(),
                };
                ConstGauge::new(v).encode(metric.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

impl Collector for ClusterMetrics {
    fn encode(&self, encoder: DescriptorEncoder<'_>) -> fmt::Result {
        let Some(source) = self.source.get() else {
            return Ok(());
        };
        encode_clusters(&source.clusters.state(), &source.backups.state(), encoder)
    }
}

#[cfg(test)]
#[path = "cluster_metrics_tests.rs"]
mod tests;
