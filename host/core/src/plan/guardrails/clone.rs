//! Where new standbys are cloned from is the policy's (`standbyClone` in its archive
//! settings); the host refuses `object-store` while the Cluster has no completed base backup
//! (`status.lastSuccessfulBackup`): `barman-cloud-restore` would find nothing to restore, and
//! every new standby would wait, failing, until one exists. Answering `primary` until then is
//! the policy's job (the production policy does), so a refusal shows a policy bug at once
//! rather than a standby that never comes up.

use pgwarden_crds::Cluster;
use pgwarden_crds::settings::{ArchiveSettings, CloneSource};

use crate::plan::errors::GuardrailError;

/// Refuses archive settings `archive` of `cluster` that clone from a store holding no
/// completed base backup of it; `config_map` names the object they would be written to.
pub fn check(
    cluster: &Cluster,
    archive: Option<&ArchiveSettings>,
    config_map: &str,
) -> Result<(), GuardrailError> {
    let Some(archive) = archive else {
        return Ok(());
    };
    let backed_up = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_successful_backup.as_deref())
        .is_some_and(|b| !b.is_empty());
    match archive.standby_clone {
        CloneSource::ObjectStore if !backed_up => Err(GuardrailError::Invalid {
            object: config_map.to_string(),
            detail: format!(
                "the policy's archive settings clone new standbys from the object store \
                 (standbyClone: object-store), but Cluster {} has no completed base backup \
                 (status.lastSuccessfulBackup is empty), so there is nothing to clone from: \
                 answer standbyClone: primary until a Backup completes",
                cluster.metadata.name.as_deref().unwrap_or_default()
            ),
        }),
        CloneSource::ObjectStore | CloneSource::Primary => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use pgwarden_sdk::defaults;
    use serde_json::json;

    use super::*;
    use crate::plan::{ClusterDecisions, plan_cluster};

    fn cluster(last_backup: Option<&str>) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": { "name": "pg", "namespace": "prod", "uid": "u-1" },
            "spec": { "instances": 2, "backup": {
                "destinationPath": "s3://backups/pg",
                "s3Credentials": { "accessKeyId": { "name": "c", "key": "ID" }, "secretAccessKey": { "name": "c", "key": "S" } } } },
            "status": { "lastSuccessfulBackup": last_backup }
        }))
        .unwrap()
    }

    /// The SDK's decisions for `cluster`, the archive settings cloning from `source`.
    fn decisions(cluster: &Cluster, source: CloneSource) -> ClusterDecisions {
        let mut archive = defaults::archive_settings(cluster).unwrap();
        if let Some(a) = archive.as_mut() {
            a.standby_clone = source;
        }
        ClusterDecisions {
            archive,
            pods: (0..2)
                .map(|i| defaults::instance_pod(cluster, i).unwrap().build())
                .collect(),
            storage: vec![defaults::storage(cluster, None).unwrap(); 2],
        }
    }

    /// `standbyClone` as the agent reads it from the planned settings ConfigMap.
    fn planned_clone(cluster: &Cluster, source: CloneSource) -> Result<String, GuardrailError> {
        let actions = plan_cluster(cluster, &decisions(cluster, source))?;
        let settings = actions
            .iter()
            .find_map(|a| match a {
                crate::plan::Action::Apply { target, object } if target.kind == "ConfigMap" => {
                    object["data"]["archive.json"].as_str().map(str::to_string)
                }
                _ => None,
            })
            .expect("the settings ConfigMap");
        let settings: serde_json::Value = serde_json::from_str(&settings).unwrap();
        Ok(settings["standbyClone"].as_str().unwrap().to_string())
    }

    #[test]
    fn the_default_clones_from_the_primary() {
        let settings = defaults::archive_settings(&cluster(None)).unwrap().unwrap();
        assert_eq!(settings.standby_clone, CloneSource::Primary);
        assert_eq!(
            planned_clone(&cluster(None), CloneSource::Primary).unwrap(),
            "primary"
        );
    }

    #[test]
    fn the_object_store_is_planned_once_a_backup_completed() {
        let backed_up = cluster(Some("nightly-1"));
        assert_eq!(
            planned_clone(&backed_up, CloneSource::ObjectStore).unwrap(),
            "object-store"
        );
    }

    #[test]
    fn the_object_store_without_a_completed_backup_is_refused_naming_it() {
        for never in [None, Some("")] {
            let err = planned_clone(&cluster(never), CloneSource::ObjectStore).unwrap_err();
            let text = err.to_string();
            assert!(
                text.starts_with("refused ConfigMap prod/pg-settings: ")
                    && text.contains("standbyClone: object-store")
                    && text.contains("Cluster pg has no completed base backup"),
                "{text}"
            );
        }
    }

    #[test]
    fn an_unknown_clone_source_in_the_settings_is_refused_naming_it() {
        // What an agent reads from a ConfigMap written by another version, or by hand.
        let text = r#"{"destinationPath": "s3://b/p", "serverName": "pg", "maxParallel": 1,
            "archiveTimeoutSeconds": 0, "standbyClone": "sibling"}"#;
        let err = serde_json::from_str::<ArchiveSettings>(text).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `sibling`, expected `primary` or `object-store`"),
            "{err}"
        );
        let older: ArchiveSettings = serde_json::from_str(
            r#"{"destinationPath": "s3://b/p", "serverName": "pg", "maxParallel": 1, "archiveTimeoutSeconds": 0}"#,
        )
        .unwrap();
        assert_eq!(
            older.standby_clone,
            CloneSource::Primary,
            "settings from before the field"
        );
    }
}
