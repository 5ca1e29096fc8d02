use pgwarden_crds::settings::CloneSource;
use pgwarden_crds::{BackupTarget, DataCompression, Encryption, WalCompression};
use serde_json::json;

use super::{backed_up, backup, cluster};
use crate::defaults::{
    ARCHIVE_TIMEOUT_SECONDS, DEFAULT_JOBS, archive_settings, backup_settings, target_pod,
};
use crate::types::{Instance, Role};

fn instance(name: &str, role: Role, ready: bool) -> Instance {
    Instance {
        name: name.into(),
        role,
        ready,
    }
}

fn two_ready() -> Vec<Instance> {
    vec![
        instance("pg-1", Role::Primary, true),
        instance("pg-2", Role::Replica, true),
    ]
}

#[test]
fn no_store_means_no_archiving() {
    let settings = archive_settings(&cluster(json!({ "instances": 1 }))).unwrap();
    assert_eq!(settings, None);
}

#[test]
fn archiving_defaults_to_the_cluster_name_one_file_at_a_time_and_a_five_minute_timeout() {
    let settings = archive_settings(&backed_up(json!({}))).unwrap().unwrap();
    assert_eq!(settings.destination_path, "s3://backups/pg");
    assert_eq!(settings.server_name, "pg");
    assert_eq!(settings.max_parallel, 1);
    assert_eq!(settings.archive_timeout_seconds, ARCHIVE_TIMEOUT_SECONDS);
    assert_eq!(ARCHIVE_TIMEOUT_SECONDS, 300);
    assert_eq!(
        (
            settings.compression,
            settings.encryption,
            settings.endpoint_url
        ),
        (None, None, None)
    );
    assert_eq!(settings.endpoint_ca_file, None);
    // A new standby is a fresh copy of the primary: it depends on no backup in the store.
    assert_eq!(settings.standby_clone, CloneSource::Primary);
}

#[test]
fn archiving_follows_the_clusters_choices_within_barmans_bounds() {
    let cluster = backed_up(json!({
        "serverName": "old-pg",
        "endpointURL": "https://minio:9000",
        "endpointCA": { "name": "ca", "key": "ca.pem" },
        "wal": { "compression": "zstd", "encryption": "aws:kms", "maxParallel": 100 },
    }));
    let settings = archive_settings(&cluster).unwrap().unwrap();
    assert_eq!(settings.server_name, "old-pg");
    assert_eq!(settings.endpoint_url.as_deref(), Some("https://minio:9000"));
    // The CA is mounted from its Secret, under a fixed file name.
    assert_eq!(
        settings.endpoint_ca_file.as_deref(),
        Some("/etc/pgwarden-ca/ca.crt")
    );
    assert_eq!(settings.compression, Some(WalCompression::Zstd));
    assert_eq!(settings.encryption, Some(Encryption::AwsKms));
    assert_eq!(settings.max_parallel, 32, "clamped to barman's maximum");
    let zero = backed_up(json!({ "wal": { "maxParallel": 0 } }));
    assert_eq!(archive_settings(&zero).unwrap().unwrap().max_parallel, 1);
}

#[test]
fn a_backup_without_a_store_is_denied_naming_the_cluster_and_the_fields() {
    let denied = backup_settings(
        &backup(json!({}), json!({})),
        &cluster(json!({ "instances": 2 })),
        &two_ready(),
    )
    .unwrap_err()
    .message;
    assert!(denied.contains("Cluster pg has no spec.backup"), "{denied}");
    assert!(denied.contains("spec.backup.s3Credentials"), "{denied}");
}

#[test]
fn a_backup_defaults_to_the_primary_two_jobs_and_a_spread_checkpoint() {
    let settings = backup_settings(
        &backup(json!({}), json!({})),
        &backed_up(json!({})),
        &two_ready(),
    )
    .unwrap();
    assert_eq!(settings.target_pod, "pg-1");
    assert_eq!(settings.jobs, DEFAULT_JOBS);
    assert_eq!(DEFAULT_JOBS, 2);
    assert!(!settings.immediate_checkpoint);
    assert_eq!((settings.compression, settings.encryption), (None, None));
}

#[test]
fn a_backup_follows_the_clusters_data_options_within_bounds() {
    let cluster = backed_up(json!({ "data": {
        "compression": "snappy", "encryption": "AES256", "jobs": 500, "immediateCheckpoint": true,
    }}));
    let b = backup(json!({}), json!({}));
    let settings = backup_settings(&b, &cluster, &two_ready()).unwrap();
    assert_eq!(settings.compression, Some(DataCompression::Snappy));
    assert_eq!(settings.encryption, Some(Encryption::Aes256));
    assert_eq!(settings.jobs, 64, "clamped");
    assert!(settings.immediate_checkpoint);
    let none = backed_up(json!({ "data": { "jobs": 0 } }));
    assert_eq!(backup_settings(&b, &none, &two_ready()).unwrap().jobs, 1);
}

#[test]
fn prefer_standby_takes_a_ready_replica_else_the_primary() {
    let cluster = backed_up(json!({}));
    let standby = target_pod(BackupTarget::PreferStandby, &cluster, &two_ready());
    assert_eq!(standby.unwrap(), "pg-2");
    let unready = [
        instance("pg-1", Role::Primary, true),
        instance("pg-2", Role::Replica, false),
    ];
    let fallback = target_pod(BackupTarget::PreferStandby, &cluster, &unready);
    assert_eq!(fallback.unwrap(), "pg-1");
    let primary = target_pod(BackupTarget::Primary, &cluster, &two_ready());
    assert_eq!(
        primary.unwrap(),
        "pg-1",
        "primary even when a standby is ready"
    );
    let via_spec = backup(json!({ "target": "prefer-standby" }), json!({}));
    let settings = backup_settings(&via_spec, &cluster, &two_ready()).unwrap();
    assert_eq!(settings.target_pod, "pg-2");
}

#[test]
fn without_a_primary_the_backup_waits_for_one() {
    let cluster = backed_up(json!({}));
    let replicas = [instance("pg-2", Role::Replica, true)];
    let denied = target_pod(BackupTarget::Primary, &cluster, &replicas)
        .unwrap_err()
        .message;
    assert!(
        denied.contains("Cluster pg has no primary instance yet"),
        "{denied}"
    );
    // A ready replica serves prefer-standby even then.
    let standby = target_pod(BackupTarget::PreferStandby, &cluster, &replicas);
    assert_eq!(standby.unwrap(), "pg-2");
}
