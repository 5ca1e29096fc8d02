//! Recovery: `spec.bootstrap.recovery` resolved to a restore of the first start. The Backup
//! (or source store) becomes a backup id and the source's archive settings, which the host
//! adds to the policy's pod as the agent's `--restore-*`/`--target-*` arguments
//! ([`with_restore`]) and to the settings ConfigMap as [`RESTORE_SOURCE_KEY`]. It is facts,
//! not a decision: which backup a Backup object names is in its status, which the policy does
//! not see.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, EnvVar, PodTemplateSpec};
use pgwarden_crds::settings::{ArchiveSettings, SETTINGS_MOUNT_PATH, pod};
use pgwarden_crds::{Backup, BackupPhase, Cluster, ObjectStore, RecoveryTarget, S3Credentials};
use pgwarden_sdk::names;
use serde::Serialize;

use super::meta::cluster_name;

/// Key of the settings ConfigMap holding the archive settings of the store a recovery
/// restores from: the agent's `--restore-source`.
pub const RESTORE_SOURCE_KEY: &str = "restore-source.json";

/// A Cluster's restore, resolved from `spec.bootstrap.recovery` and the objects it names.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Restore {
    /// The barman backup id to restore (`latest`: the newest one).
    pub backup_id: String,
    /// The store to restore from, as archive settings (no secret in them).
    pub source: ArchiveSettings,
    /// The source store's credentials (Secret selectors), when the instance does not already
    /// get them as the Cluster's own `spec.backup.s3Credentials`.
    pub credentials: Option<S3Credentials>,
    /// Where recovery stops; `None`: at the end of the archived WAL.
    pub target: Option<RecoveryTarget>,
}

/// Why a recovery Cluster cannot bootstrap yet: a condition reason and a message that names
/// the object to fix or wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryWait {
    pub reason: &'static str,
    pub message: String,
}

fn wait(reason: &'static str, message: String) -> RecoveryWait {
    RecoveryWait { reason, message }
}

/// The restore of `cluster`, `None` without `spec.bootstrap.recovery`. `backup` is the Backup
/// `recovery.backup.name` names, as observed; `backup_cluster` the Cluster it was taken of
/// (whose store gives the endpoint and credentials; the Cluster's own store when absent).
/// A Backup that is absent or not completed is a [`RecoveryWait`] naming it.
pub fn recovery(
    cluster: &Cluster,
    backup: Option<&Backup>,
    backup_cluster: Option<&Cluster>,
) -> Result<Option<Restore>, RecoveryWait> {
    let Some(recovery) = cluster
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.as_ref())
    else {
        return Ok(None);
    };
    let (store, backup_id) = match (&recovery.backup, &recovery.source) {
        (Some(reference), _) => from_backup(cluster, &reference.name, backup, backup_cluster)?,
        (None, Some(source)) => {
            let server = source
                .server_name
                .clone()
                .unwrap_or_else(|| cluster_name(cluster).into());
            let store = ObjectStore {
                server_name: Some(server),
                ..source.clone()
            };
            let id = recovery
                .backup_id
                .clone()
                .unwrap_or_else(|| "latest".into());
            (store, id)
        }
        (None, None) => {
            return Err(wait(
                "RecoveryWithoutSource",
                "spec.bootstrap.recovery names neither a backup nor a source".into(),
            ));
        }
    };
    let own = cluster.spec.backup.as_ref();
    Ok(Some(Restore {
        backup_id,
        credentials: source_credentials(own, &store)?,
        source: source_settings(own, &store)?,
        target: recovery.recovery_target.clone(),
    }))
}

/// The source store's credentials when the instance does not have them already; a wait when
/// they differ from the Cluster's own (an instance gets one set of store credentials).
fn source_credentials(
    own: Option<&ObjectStore>,
    store: &ObjectStore,
) -> Result<Option<S3Credentials>, RecoveryWait> {
    let mine = own.and_then(|o| o.s3_credentials.as_ref());
    match (mine, store.s3_credentials.as_ref()) {
        (Some(mine), Some(theirs)) if mine != theirs => Err(wait(
            "RecoveryCredentialsDiffer",
            format!(
                "the store to restore from ({}) has other s3Credentials than spec.backup: an instance gets one set of store credentials, so use the same Secret keys for both",
                store.destination_path
            ),
        )),
        (None, Some(theirs)) => Ok(Some(theirs.clone())),
        _ => Ok(None),
    }
}

/// The source store as archive settings (the agent's `--restore-source`): its CA must be the
/// Cluster's own, the one file the pod mounts.
fn source_settings(
    own: Option<&ObjectStore>,
    store: &ObjectStore,
) -> Result<ArchiveSettings, RecoveryWait> {
    let own_ca = own.and_then(|o| o.endpoint_ca.as_ref());
    let endpoint_ca_file = match store.endpoint_ca.as_ref() {
        None => None,
        Some(ca) if Some(ca) == own_ca => {
            Some(format!("{}/{}", names::CA_MOUNT_PATH, names::CA_FILE))
        }
        Some(_) => {
            return Err(wait(
                "RecoveryCaDiffers",
                format!(
                    "the store to restore from ({}) has another endpointCA than spec.backup: use the same one",
                    store.destination_path
                ),
            ));
        }
    };
    Ok(ArchiveSettings {
        destination_path: store.destination_path.clone(),
        endpoint_url: store.endpoint_url.clone(),
        endpoint_ca_file,
        server_name: store.server_name.clone().unwrap_or_default(),
        compression: None,
        encryption: None,
        sse_kms_key_id: None,
        max_parallel: 1,
        archive_timeout_seconds: 0,
        archiver: Default::default(),
        standby_clone: Default::default(),
    })
}

/// The store and backup id of a completed Backup; a wait while it is absent or unfinished.
fn from_backup(
    cluster: &Cluster,
    backup_name: &str,
    backup: Option<&Backup>,
    backup_cluster: Option<&Cluster>,
) -> Result<(ObjectStore, String), RecoveryWait> {
    let namespace = cluster.metadata.namespace.as_deref().unwrap_or("default");
    let Some(backup) = backup else {
        return Err(wait(
            "BackupNotFound",
            format!(
                "spec.bootstrap.recovery.backup: Backup {namespace}/{backup_name} does not exist; the Cluster waits for it"
            ),
        ));
    };
    let status = backup.status.clone().unwrap_or_default();
    if status.phase != Some(BackupPhase::Completed) {
        let phase = status
            .phase
            .and_then(|p| serde_json::to_value(p).ok())
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "pending".into());
        return Err(wait(
            "BackupNotCompleted",
            format!(
                "spec.bootstrap.recovery.backup: Backup {namespace}/{backup_name} is {phase}, not completed; the Cluster waits for it"
            ),
        ));
    }
    let (Some(id), Some(path)) = (status.backup_id, status.destination_path) else {
        return Err(wait(
            "BackupWithoutId",
            format!(
                "spec.bootstrap.recovery.backup: Backup {namespace}/{backup_name} is completed but its status has no backupId or destinationPath"
            ),
        ));
    };
    let base = backup_cluster
        .and_then(|c| c.spec.backup.clone())
        .or_else(|| cluster.spec.backup.clone())
        .unwrap_or_default();
    let server = status
        .server_name
        .unwrap_or_else(|| backup.spec.cluster.name.clone());
    let store = ObjectStore {
        destination_path: path,
        server_name: Some(server),
        ..base
    };
    Ok((store, id))
}

/// The agent's arguments that restore `restore` instead of running initdb.
pub fn restore_args(restore: &Restore, settings_dir: &str) -> Vec<String> {
    let mut args = vec![
        "--restore-backup".to_string(),
        restore.backup_id.clone(),
        "--restore-source".into(),
        format!("{settings_dir}/{RESTORE_SOURCE_KEY}"),
    ];
    let target = restore.target.clone().unwrap_or_default();
    for (flag, value) in [
        ("--target-time", target.target_time),
        ("--target-lsn", target.target_lsn),
        ("--target-xid", target.target_xid),
        ("--target-name", target.target_name),
    ] {
        if let Some(value) = value {
            args.extend([flag.to_string(), value]);
        }
    }
    if target.target_immediate == Some(true) {
        args.push("--target-immediate".into());
    }
    if target.exclusive == Some(true) {
        args.push("--target-exclusive".into());
    }
    args
}

/// The policy's pod template with the restore added to its `postgres` container: the
/// agent's arguments, and the source store's credentials as `secretKeyRef` env when the
/// Cluster's own do not provide them.
pub fn with_restore(template: &PodTemplateSpec, restore: &Restore) -> PodTemplateSpec {
    let mut template = template.clone();
    let Some(spec) = template.spec.as_mut() else {
        return template;
    };
    for container in spec
        .containers
        .iter_mut()
        .filter(|c| c.name == pod::CONTAINER)
    {
        let settings_dir = env_value(container, pod::ENV_SETTINGS_DIR)
            .unwrap_or_else(|| SETTINGS_MOUNT_PATH.into());
        container
            .args
            .get_or_insert_with(Vec::new)
            .extend(restore_args(restore, &settings_dir));
        if let Some(creds) = &restore.credentials {
            let vars = container.env.get_or_insert_with(Vec::new);
            for var in credential_env(creds) {
                vars.retain(|v| v.name != var.name);
                vars.push(var);
            }
        }
    }
    template
}

fn env_value(container: &Container, var: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == var)
        .and_then(|v| v.value.clone())
}

fn credential_env(creds: &S3Credentials) -> Vec<EnvVar> {
    creds
        .selectors()
        .map(|k| pgwarden_sdk::defaults::secret_env(k.env, k.selector))
        .collect()
}

/// The Secrets a restore's credentials name (the pod guardrail allows them).
pub fn restore_secrets(restore: Option<&Restore>) -> BTreeSet<String> {
    let Some(creds) = restore.and_then(|r| r.credentials.as_ref()) else {
        return BTreeSet::new();
    };
    creds.selectors().map(|k| k.selector.name.clone()).collect()
}

#[cfg(test)]
mod tests;
