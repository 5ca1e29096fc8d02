//! The decisions, typed: inputs are the `crds` objects, outputs the SDK's wire types, each
//! checked before the host acts on it.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::settings::{ArchiveSettings, BackupSettings};
use pgwarden_crds::{Backup, Cluster, ScheduledBackup};
use pgwarden_sdk::types::{
    BackupFacts, ClaimFacts, ClusterFacts, ClusterHealth, Decision, Expiry, FailoverFacts,
    Instance, Promotion, Request, ScheduleDecision, Storage, Transition,
};
use serde::Serialize;
use tracing::Instrument;

use super::bindings::wit;
use super::engine::{MAX_MESSAGE_BYTES, NO_SETTINGS, Policy};
use super::errors::{PolicyError, Result};
use pgwarden_core::plan::{ClusterDecisions, planned_instances};
use pgwarden_core::quantity::nanos;

/// The largest pod template a policy may answer (the API server's own object limit is ~1.5 MiB).
pub const MAX_POD_TEMPLATE_BYTES: usize = 1 << 20;

/// An object as the JSON text the host sends across the boundary.
fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn malformed(decision: &str, detail: impl Into<String>) -> PolicyError {
    PolicyError::MalformedOutput {
        decision: decision.into(),
        detail: detail.into(),
    }
}

fn check(decision: &str, ok: bool, detail: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(malformed(decision, detail()))
    }
}

fn check_reason(decision: &str, reason: &str) -> Result<()> {
    check(
        decision,
        !reason.is_empty()
            && reason.len() <= 64
            && reason.chars().all(|c| c.is_ascii_alphanumeric()),
        || format!("reason {reason:?} is not one CamelCase word"),
    )
}

/// A Kubernetes object name: a DNS subdomain.
fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

impl Policy {
    /// The same module with `settings` (`ReconcilePolicy.spec.settings`; none: `{}`),
    /// checked by the policy first: settings it refuses are a denial of
    /// `validate-settings`.
    pub fn with_settings(&self, settings: Option<&serde_json::Value>) -> Result<Policy> {
        let text = settings.map_or_else(|| NO_SETTINGS.to_string(), |v| v.to_string());
        let policy = self.with_settings_text(text);
        policy.validate_settings()?;
        Ok(policy)
    }

    /// Every decision of `cluster`'s objects: the Cluster validated, its archive settings,
    /// and per planned instance a pod template (seeing the observed `instances`) and the
    /// storage of its claim (`claims[i]` as observed for instance `i`; a shorter slice: none).
    pub fn cluster_decisions(
        &self,
        cluster: &Cluster,
        instances: &[Instance],
        claims: &[Option<ClaimFacts>],
    ) -> Result<ClusterDecisions> {
        self.validate(cluster)?;
        let archive = self.archive_settings(cluster)?;
        let planned = planned_instances(cluster);
        let pods = (0..planned)
            .map(|i| self.instance_pod(cluster, i, instances))
            .collect::<Result<_>>()?;
        let storage = (0..planned)
            .map(|i| {
                let current = claims.get(i as usize).and_then(Option::as_ref);
                self.storage(cluster, i, current)
            })
            .collect::<Result<_>>()?;
        Ok(ClusterDecisions {
            archive,
            pods,
            storage,
        })
    }

    /// Whether the policy accepts its settings (`validate-settings`).
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn validate_settings(&self) -> Result<()> {
        self.call("validate-settings", |p, s| {
            p.call_validate_settings(s, self.settings())
        })
    }

    /// Whether the policy accepts `cluster` at all (`validate`).
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn validate(&self, cluster: &Cluster) -> Result<()> {
        self.call("validate", |p, s| {
            p.call_validate(s, self.settings(), &json(cluster))
        })
    }

    /// The storage of instance `instance`'s claim (`current`: as observed). Its size must
    /// read as a quantity and its class as an object name; the planner's guardrails decide
    /// what may change on an existing claim.
    #[tracing::instrument(skip_all, fields(digest = self.digest(), instance))]
    pub fn storage(
        &self,
        cluster: &Cluster,
        instance: u32,
        current: Option<&ClaimFacts>,
    ) -> Result<Storage> {
        const D: &str = "storage";
        let current = current.cloned().map(wit::ClaimFacts::from);
        let storage = Storage::from(self.call(D, |p, s| {
            p.call_storage(
                s,
                self.settings(),
                &json(cluster),
                instance,
                current.as_ref(),
            )
        })?);
        check(D, nanos(&storage.size).is_some_and(|n| n > 0), || {
            format!(
                "size {:?} is not a positive Kubernetes quantity",
                storage.size
            )
        })?;
        if let Some(class) = &storage.storage_class {
            check(D, is_dns_subdomain(class), || {
                format!("storageClass {class:?} is not a valid object name")
            })?;
        }
        Ok(storage)
    }

    /// The Cluster's phase and `Ready` condition from `facts`.
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn cluster_health(&self, facts: &ClusterFacts) -> Result<ClusterHealth> {
        const D: &str = "cluster-status";
        let input = wit::ClusterFacts::from(facts);
        let health = ClusterHealth::from(
            self.call(D, |p, s| p.call_cluster_status(s, self.settings(), &input))?,
        );
        check(
            D,
            !health.phase.is_empty() && health.phase.len() <= 128,
            || format!("phase {:?} is empty or over 128 bytes", health.phase),
        )?;
        check_reason(D, &health.ready.reason)?;
        check(D, health.ready.message.len() <= MAX_MESSAGE_BYTES, || {
            format!("the Ready message is over {MAX_MESSAGE_BYTES} bytes")
        })?;
        Ok(health)
    }

    /// Whether a standby is promoted now (`failover`). The answer's shape is checked here
    /// (a pod name, a one-word reason); whether the instance may be promoted is the core's
    /// check (`pgwarden_core::failover::check`).
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn failover(&self, facts: &FailoverFacts) -> Result<Option<Promotion>> {
        const D: &str = "failover";
        let input = wit::FailoverFacts::from(facts);
        let answer = self.call(D, |p, s| p.call_failover(s, self.settings(), &input))?;
        let Some(promotion) = answer.map(Promotion::from) else {
            return Ok(None);
        };
        check(D, is_dns_subdomain(&promotion.instance), || {
            format!("instance {:?} is not a pod name", promotion.instance)
        })?;
        check_reason(D, &promotion.reason)?;
        check(D, promotion.message.len() <= MAX_MESSAGE_BYTES, || {
            format!("the message is over {MAX_MESSAGE_BYTES} bytes")
        })?;
        Ok(Some(promotion))
    }

    /// The pod template of instance `instance` of `cluster`, parsed as a k8s-openapi
    /// `PodTemplateSpec`.
    #[tracing::instrument(skip_all, fields(digest = self.digest(), instance))]
    pub fn instance_pod(
        &self,
        cluster: &Cluster,
        instance: u32,
        instances: &[Instance],
    ) -> Result<PodTemplateSpec> {
        const D: &str = "instance-pod";
        let observed: Vec<wit::Instance> = instances.iter().cloned().map(Into::into).collect();
        let text = self.call(D, |p, s| {
            p.call_instance_pod(s, self.settings(), &json(cluster), instance, &observed)
        })?;
        check(D, text.len() <= MAX_POD_TEMPLATE_BYTES, || {
            format!(
                "the pod template is {} bytes, over the {MAX_POD_TEMPLATE_BYTES}-byte bound",
                text.len()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| malformed(D, format!("not a PodTemplateSpec: {e}")))
    }

    /// How WAL is archived; `None`: archiving off.
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn archive_settings(&self, cluster: &Cluster) -> Result<Option<ArchiveSettings>> {
        const D: &str = "archive-settings";
        let settings = self
            .call(D, |p, s| {
                p.call_archive_settings(s, self.settings(), &json(cluster))
            })?
            .map(ArchiveSettings::from)
            .map(|s| with_wal_kms_key(s, cluster));
        if let Some(s) = &settings {
            check(
                D,
                s.destination_path.starts_with("s3://") && s.destination_path.len() > 5,
                || {
                    format!(
                        "destinationPath {:?} is not an s3:// URL",
                        s.destination_path
                    )
                },
            )?;
            check(D, !s.server_name.is_empty(), || {
                "serverName is empty".into()
            })?;
            check(D, (1..=32).contains(&s.max_parallel), || {
                format!("maxParallel {} is not within 1..=32", s.max_parallel)
            })?;
        }
        Ok(settings)
    }

    /// How `backup` is taken, and on which of `instances`.
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn backup_settings(
        &self,
        backup: &Backup,
        cluster: &Cluster,
        instances: &[Instance],
    ) -> Result<BackupSettings> {
        const D: &str = "backup-settings";
        let wit_instances: Vec<wit::Instance> = instances.iter().cloned().map(Into::into).collect();
        let settings = BackupSettings::from(self.call(D, |p, s| {
            p.call_backup_settings(
                s,
                self.settings(),
                &json(backup),
                &json(cluster),
                &wit_instances,
            )
        })?);
        let settings = with_data_kms_key(settings, cluster);
        check(
            D,
            instances.iter().any(|i| i.name == settings.target_pod),
            || {
                format!(
                    "target pod {:?} is not an instance of the Cluster",
                    settings.target_pod
                )
            },
        )?;
        check(D, (1..=64).contains(&settings.jobs), || {
            format!("jobs {} is not within 1..=64", settings.jobs)
        })?;
        Ok(settings)
    }

    /// The next phase of a Backup.
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn backup_transition(&self, facts: &BackupFacts) -> Result<Transition> {
        const D: &str = "backup-transition";
        let input = wit::BackupFacts {
            backup: json(&facts.backup),
            cluster: facts.cluster.as_ref().map(json),
            pod: facts.pod.as_ref().map(wit::PodFacts::from),
            now: facts.now.timestamp(),
        };
        let t = Transition::from(self.call(D, |p, s| {
            p.call_backup_transition(s, self.settings(), &input)
        })?);
        check_reason(D, &t.reason)?;
        check(D, t.message.len() <= MAX_MESSAGE_BYTES, || {
            format!("the message is over {MAX_MESSAGE_BYTES} bytes")
        })?;
        Ok(t)
    }

    /// Whether `scheduled` creates a Backup at `now`, and when it runs next.
    #[tracing::instrument(skip_all, fields(digest = self.digest()))]
    pub fn schedule(
        &self,
        scheduled: &ScheduledBackup,
        now: DateTime<Utc>,
    ) -> Result<ScheduleDecision> {
        const D: &str = "schedule";
        let d = ScheduleDecision::from(self.call(D, |p, s| {
            p.call_schedule(s, self.settings(), &json(scheduled), now.timestamp())
        })?);
        if let Some(run) = &d.create {
            check(D, is_dns_subdomain(&run.name), || {
                format!("Backup name {:?} is not a valid object name", run.name)
            })?;
        }
        Ok(d)
    }

    /// The Backups of `cluster` whose backups to delete at `now`, and the fate of their objects.
    #[tracing::instrument(skip_all, fields(digest = self.digest(), backups = backups.len()))]
    pub fn retention(
        &self,
        cluster: &Cluster,
        backups: &[Backup],
        now: DateTime<Utc>,
    ) -> Result<Vec<Expiry>> {
        const D: &str = "retention";
        let texts: Vec<String> = backups.iter().map(json).collect();
        let doomed = self.call(D, |p, s| {
            p.call_retention(s, self.settings(), &json(cluster), &texts, now.timestamp())
        })?;
        let doomed: Vec<Expiry> = doomed.into_iter().map(Into::into).collect();
        for Expiry { name, .. } in &doomed {
            check(
                D,
                backups
                    .iter()
                    .any(|b| b.metadata.name.as_deref() == Some(name)),
                || format!("Backup {name:?} is not one of the Backups it was given"),
            )?;
        }
        Ok(doomed)
    }

    /// Any decision, by request (what `pgwarden policy eval|test` use), as the operator asks
    /// it: the Cluster validated before the decisions about its objects.
    pub fn decide(&self, request: &Request) -> Result<Decision> {
        if let Request::InstancePod { cluster, .. }
        | Request::Storage { cluster, .. }
        | Request::ArchiveSettings { cluster } = request
        {
            self.validate(cluster)?;
        }
        Ok(match request {
            Request::ValidateSettings {} => {
                self.validate_settings()?;
                Decision::Valid(true)
            }
            Request::Validate { cluster } => {
                self.validate(cluster)?;
                Decision::Valid(true)
            }
            Request::InstancePod {
                cluster,
                instance,
                instances,
            } => Decision::InstancePod(Box::new(self.instance_pod(cluster, *instance, instances)?)),
            Request::Storage {
                cluster,
                instance,
                current,
            } => Decision::Storage(self.storage(cluster, *instance, current.as_ref())?),
            Request::ArchiveSettings { cluster } => {
                Decision::ArchiveSettings(self.archive_settings(cluster)?)
            }
            Request::BackupSettings {
                backup,
                cluster,
                instances,
            } => Decision::BackupSettings(self.backup_settings(backup, cluster, instances)?),
            Request::BackupTransition(facts) => {
                Decision::BackupTransition(self.backup_transition(facts)?)
            }
            Request::Schedule {
                scheduled_backup,
                now,
            } => Decision::Schedule(self.schedule(scheduled_backup, *now)?),
            Request::Retention {
                cluster,
                backups,
                now,
            } => Decision::Retention(self.retention(cluster, backups, *now)?),
            Request::ClusterStatus(facts) => Decision::ClusterStatus(self.cluster_health(facts)?),
            Request::Failover(facts) => Decision::Failover(self.failover(facts)?),
        })
    }

    /// Runs `f` (one or more decisions) off the async executor, on a blocking thread, under
    /// the engine's concurrency limit, inside the caller's tracing span. What the operator
    /// calls: `policy.run(move |p| p.instance_pod(&cluster, 0)).await`.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Policy) -> Result<T> + Send + 'static,
    {
        let span = tracing::info_span!("policy", digest = self.digest());
        let permit = self
            .engine
            .permits
            .clone()
            .acquire_owned()
            .instrument(span.clone())
            .await;
        let permit =
            permit.map_err(|e| PolicyError::Engine(format!("the call queue is closed: {e}")))?;
        let policy = self.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            span.in_scope(|| f(&policy))
        })
        .await;
        joined.map_err(|e| PolicyError::Engine(format!("the policy thread failed: {e}")))?
    }
}

/// The KMS key of `spec.backup.wal.sseKmsKeyId` when the policy decided `aws:kms`: the key
/// id is not in the policy ABI (a policy decides whether to encrypt; the Cluster names the
/// key, as it names the credentials).
fn with_wal_kms_key(mut s: ArchiveSettings, cluster: &Cluster) -> ArchiveSettings {
    let wal = cluster.spec.backup.as_ref().and_then(|b| b.wal.as_ref());
    s.sse_kms_key_id = wal
        .and_then(|w| w.sse_kms_key_id.clone())
        .filter(|_| s.encryption == Some(pgwarden_crds::Encryption::AwsKms));
    s
}

/// As [`with_wal_kms_key`] for a base backup: `spec.backup.data.sseKmsKeyId`, or the WAL's
/// key when the data section sets no encryption (a policy may let backups inherit the WAL's).
fn with_data_kms_key(mut s: BackupSettings, cluster: &Cluster) -> BackupSettings {
    let store = cluster.spec.backup.as_ref();
    let data = store.and_then(|b| b.data.as_ref());
    let key = match data.filter(|d| d.encryption.is_some()) {
        Some(d) => d.sse_kms_key_id.clone(),
        None => store
            .and_then(|b| b.wal.as_ref())
            .and_then(|w| w.sse_kms_key_id.clone()),
    };
    s.sse_kms_key_id = key.filter(|_| s.encryption == Some(pgwarden_crds::Encryption::AwsKms));
    s
}
