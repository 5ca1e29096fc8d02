//! A policy that misbehaves on purpose, chosen by the Cluster's name:
//!
//! | name              | what it does                                   |
//! |-------------------|------------------------------------------------|
//! | `loop`            | spins forever                                  |
//! | `alloc`           | allocates and touches 1 GiB                    |
//! | `panic`           | panics (a trap)                                |
//! | `garbage`         | answers a pod template that is not JSON        |
//! | `bad-settings`    | archive settings no barman could use           |
//! | `other-namespace` | a pod template in namespace kube-system        |
//! | `secret-value`    | a secret's value written into the pod's env    |
//! | `foreign-claim`   | mounts another cluster's volume claim          |
//! | `huge`            | a 2 MiB pod template                           |
//! | `large`           | a 700 KiB pod template                         |
//! | `reads-env`       | reads an environment variable (WASI)           |
//! | `reads-file`      | reads a file (WASI filesystem)                 |
//! | `reads-clock`     | reads the wall clock (WASI clocks)             |
//! | `echo-settings`   | denies (reason `Echo`), the settings as message |
//! | `bad-reason`      | denies with a reason that is not one word      |
//! | `bad-storage`     | a claim size that is no quantity               |
//! | `promote-ghost`   | failover: promotes `ghost-7`, no such instance  |
//! | `promote-primary` | failover: promotes the current primary          |
//! | `promote-lagging` | failover: promotes a standby that never streamed |
//! | `always-ready`    | cluster-status: healthy and Ready, whatever the pods |
//! | anything else     | the default decisions                          |
//!
//! Every setting is accepted except a `refuse` field (denied, `InvalidSettings`).

use pgwarden_sdk::prelude::*;

pub struct Adversarial;

fn misbehave(cluster: &Cluster) {
    match defaults::cluster_name(cluster) {
        "loop" => loop {
            std::hint::black_box(());
        },
        "alloc" => {
            let v = vec![1u8; 1 << 30];
            std::hint::black_box(&v);
        }
        "panic" => panic!("the adversarial policy panics"),
        // Capabilities the sandbox does not grant: each call must trap, naming the import.
        "reads-env" => {
            std::hint::black_box(std::env::var_os("HOME"));
        }
        "reads-file" => {
            std::hint::black_box(std::fs::read("/etc/passwd").ok());
        }
        "reads-clock" => {
            std::hint::black_box(std::time::SystemTime::now());
        }
        _ => {}
    }
}

impl Policy for Adversarial {
    fn validate_settings(settings: &Settings) -> Decided<()> {
        match settings.value().get("refuse") {
            Some(_) => Err(Denial::new(
                "InvalidSettings",
                "settings.refuse: the adversarial policy refuses it",
            )),
            None => Ok(()),
        }
    }

    fn instance_pod(
        settings: &Settings,
        cluster: &Cluster,
        instance: u32,
        _instances: &[Instance],
    ) -> Decided<PodTemplateSpec> {
        match defaults::cluster_name(cluster) {
            "echo-settings" => return Err(Denial::new("Echo", settings.to_json())),
            "bad-reason" => return Err(Denial::new("Not one word", "a denial")),
            _ => {}
        }
        misbehave(cluster);
        let mut pod = defaults::instance_pod(cluster, instance)?;
        match defaults::cluster_name(cluster) {
            "other-namespace" => {
                pod.template
                    .metadata
                    .get_or_insert_with(Default::default)
                    .namespace = Some("kube-system".into());
            }
            "secret-value" => pod = pod.env("AWS_SECRET_ACCESS_KEY", "hunter2"),
            "foreign-claim" => {
                let volumes = pod.template.spec.as_mut().and_then(|s| s.volumes.as_mut());
                if let Some(claim) = volumes.and_then(|v| {
                    v.iter_mut()
                        .find_map(|v| v.persistent_volume_claim.as_mut())
                }) {
                    claim.claim_name = "someone-else-1".into();
                }
            }
            "huge" => pod = pod.label("padding", &"x".repeat(2 << 20)),
            "large" => pod = pod.label("padding", &"x".repeat(700 << 10)),
            _ => {}
        }
        Ok(pod.build())
    }

    fn storage(
        _settings: &Settings,
        cluster: &Cluster,
        _instance: u32,
        current: Option<&ClaimFacts>,
    ) -> Decided<Storage> {
        let mut storage = defaults::storage(cluster, current)?;
        if defaults::cluster_name(cluster) == "bad-storage" {
            storage.size = "lots".into();
        }
        Ok(storage)
    }

    fn archive_settings(
        _settings: &Settings,
        cluster: &Cluster,
    ) -> Decided<Option<ArchiveSettings>> {
        misbehave(cluster);
        let mut settings = defaults::archive_settings(cluster)?;
        if let (Some(s), "bad-settings") = (settings.as_mut(), defaults::cluster_name(cluster)) {
            s.destination_path = "ftp://nowhere".into();
            s.max_parallel = 0;
        }
        Ok(settings)
    }

    fn cluster_status(_settings: &Settings, facts: &ClusterFacts) -> Decided<ClusterHealth> {
        if defaults::cluster_name(&facts.cluster) != "always-ready" {
            return defaults::cluster_status(facts);
        }
        Ok(ClusterHealth {
            phase: defaults::phase::HEALTHY.into(),
            ready: ConditionDecision {
                status: true,
                reason: "InstancesReady".into(),
                message: "ready, whatever the pods say".into(),
            },
        })
    }

    fn failover(_settings: &Settings, facts: &FailoverFacts) -> Decided<Option<Promotion>> {
        bad_failover(facts)
    }
}

/// A promotion of `instance`, whatever the facts.
fn promote(instance: &str) -> Decided<Option<Promotion>> {
    Ok(Some(Promotion {
        instance: instance.into(),
        reason: "Adversarial".into(),
        message: format!("the adversarial policy promotes {instance}"),
    }))
}

/// The failover decisions the host must refuse, by the Cluster's name.
fn bad_failover(facts: &FailoverFacts) -> Decided<Option<Promotion>> {
    match defaults::cluster_name(&facts.cluster) {
        "promote-ghost" => promote("ghost-7"),
        "promote-primary" => promote(facts.current_primary.as_deref().unwrap_or_default()),
        "promote-lagging" => match facts
            .instances
            .iter()
            .find(|i| i.role == Role::Replica && !i.streaming)
        {
            Some(i) => promote(&i.name),
            None => Ok(None),
        },
        _ => defaults::failover(facts, defaults::FAILOVER_DELAY_SECONDS),
    }
}

/// The raw exports: [`Adversarial`] through the SDK's glue, except that a Cluster named
/// `garbage` gets a pod template that is not JSON at all.
pub struct Raw;

type Glue = pgwarden_sdk::glue::Exports<Adversarial>;
use pgwarden_sdk::wit::{self, Guest};

type Answer<T> = Result<T, wit::Denial>;

impl Guest for Raw {
    fn abi_version() -> String {
        Glue::abi_version()
    }
    fn validate_settings(settings: String) -> Answer<()> {
        Glue::validate_settings(settings)
    }
    fn validate(settings: String, cluster: String) -> Answer<()> {
        Glue::validate(settings, cluster)
    }
    fn instance_pod(
        settings: String,
        cluster: String,
        instance: u32,
        instances: Vec<wit::Instance>,
    ) -> Answer<String> {
        if cluster.contains("\"name\":\"garbage\"") {
            return Ok("{\"spec\": [1, 2, oops".into());
        }
        Glue::instance_pod(settings, cluster, instance, instances)
    }
    fn storage(
        settings: String,
        cluster: String,
        instance: u32,
        current: Option<wit::ClaimFacts>,
    ) -> Answer<wit::Storage> {
        Glue::storage(settings, cluster, instance, current)
    }
    fn archive_settings(settings: String, cluster: String) -> Answer<Option<wit::ArchiveSettings>> {
        Glue::archive_settings(settings, cluster)
    }
    fn backup_settings(
        settings: String,
        backup: String,
        cluster: String,
        instances: Vec<wit::Instance>,
    ) -> Answer<wit::BackupSettings> {
        Glue::backup_settings(settings, backup, cluster, instances)
    }
    fn backup_transition(settings: String, facts: wit::BackupFacts) -> Answer<wit::Transition> {
        Glue::backup_transition(settings, facts)
    }
    fn schedule(
        settings: String,
        scheduled_backup: String,
        now: i64,
    ) -> Answer<wit::ScheduleDecision> {
        Glue::schedule(settings, scheduled_backup, now)
    }
    fn retention(
        settings: String,
        cluster: String,
        backups: Vec<String>,
        now: i64,
    ) -> Answer<Vec<wit::Expiry>> {
        Glue::retention(settings, cluster, backups, now)
    }
    fn cluster_status(settings: String, facts: wit::ClusterFacts) -> Answer<wit::ClusterHealth> {
        Glue::cluster_status(settings, facts)
    }
    fn failover(settings: String, facts: wit::FailoverFacts) -> Answer<Option<wit::Promotion>> {
        Glue::failover(settings, facts)
    }
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::Raw;
    pgwarden_sdk::wit::export_raw!(Raw with_types_in pgwarden_sdk::wit);
}
