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
//! | anything else     | the default decisions                          |

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
    fn instance_pod(cluster: &Cluster, instance: u32) -> Decided<PodTemplateSpec> {
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

    fn archive_settings(cluster: &Cluster) -> Decided<Option<ArchiveSettings>> {
        misbehave(cluster);
        let mut settings = defaults::archive_settings(cluster)?;
        if let (Some(s), "bad-settings") = (settings.as_mut(), defaults::cluster_name(cluster)) {
            s.destination_path = "ftp://nowhere".into();
            s.max_parallel = 0;
        }
        Ok(settings)
    }
}

/// The raw exports: [`Adversarial`] through the SDK's glue, except that a Cluster named
/// `garbage` gets a pod template that is not JSON at all.
pub struct Raw;

type Glue = pgwarden_sdk::glue::Exports<Adversarial>;
use pgwarden_sdk::wit::{self, Guest};

impl Guest for Raw {
    fn abi_version() -> String {
        Glue::abi_version()
    }
    fn instance_pod(cluster: String, instance: u32) -> Result<String, String> {
        if cluster.contains("\"name\":\"garbage\"") {
            return Ok("{\"spec\": [1, 2, oops".into());
        }
        Glue::instance_pod(cluster, instance)
    }
    fn archive_settings(cluster: String) -> Result<Option<wit::ArchiveSettings>, String> {
        Glue::archive_settings(cluster)
    }
    fn backup_settings(
        backup: String,
        cluster: String,
        instances: Vec<wit::Instance>,
    ) -> Result<wit::BackupSettings, String> {
        Glue::backup_settings(backup, cluster, instances)
    }
    fn backup_transition(facts: wit::BackupFacts) -> Result<wit::Transition, String> {
        Glue::backup_transition(facts)
    }
    fn schedule(scheduled_backup: String, now: i64) -> Result<wit::ScheduleDecision, String> {
        Glue::schedule(scheduled_backup, now)
    }
    fn retention(
        cluster: String,
        backups: Vec<String>,
        now: i64,
    ) -> Result<Vec<wit::Expiry>, String> {
        Glue::retention(cluster, backups, now)
    }
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::Raw;
    pgwarden_sdk::wit::export_raw!(Raw with_types_in pgwarden_sdk::wit);
}
