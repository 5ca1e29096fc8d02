//! Names of the objects the operator creates for a Cluster. Policies and the host's planner
//! share them, so a pod template can refer to its own volume claim and settings ConfigMap.

/// Pod (and volume claim) of instance number `instance` (0-based): `<cluster>-1`, `<cluster>-2`...
pub fn instance(cluster: &str, instance: u32) -> String {
    format!("{cluster}-{}", instance + 1)
}

/// The ConfigMap holding the decided archive settings: `<cluster>-settings`.
pub fn settings_config_map(cluster: &str) -> String {
    format!("{cluster}-settings")
}

/// The read-write Service (the primary): `<cluster>-rw`.
pub fn service_rw(cluster: &str) -> String {
    format!("{cluster}-rw")
}

/// The read-only Service (replicas): `<cluster>-r`.
pub fn service_r(cluster: &str) -> String {
    format!("{cluster}-r")
}

/// The Service over every instance: `<cluster>-any`.
pub fn service_any(cluster: &str) -> String {
    format!("{cluster}-any")
}

/// The instance agent's identity: the ServiceAccount of the instance pods, and the Role and
/// RoleBinding that let it report facts and take Backups: `<cluster>-agent`.
pub fn agent(cluster: &str) -> String {
    format!("{cluster}-agent")
}

/// The Secret with the replication user's password, generated once by the operator and
/// owned by the Cluster: `<cluster>-replication` (a Secret name may be 253 characters long).
pub fn replication_secret(cluster: &str) -> String {
    format!("{cluster}-replication")
}

/// The PostgreSQL role standbys connect as (REPLICATION, nothing else).
pub const REPLICATION_USER: &str = "streaming_replica";
/// The key of the password in [`replication_secret`].
pub const REPLICATION_PASSWORD_KEY: &str = "password";
/// Name of the pod volume holding [`replication_secret`].
pub const REPLICATION_VOLUME: &str = "replication";
/// Where [`replication_secret`] is mounted (files readable by root only: the agent copies the
/// password into a passfile for the `postgres` user).
pub const REPLICATION_MOUNT_PATH: &str = "/etc/pgwarden-replication";

/// Name of the pod volume holding the data directory.
pub const DATA_VOLUME: &str = "pgdata";
/// Name of the pod volume holding the settings ConfigMap.
pub const SETTINGS_VOLUME: &str = "settings";
/// Name of the pod volume holding the object store's CA bundle.
pub const CA_VOLUME: &str = "endpoint-ca";
/// Where the CA bundle is mounted, and its file name.
pub const CA_MOUNT_PATH: &str = "/etc/pgwarden-ca";
/// File name of the CA bundle inside [`CA_MOUNT_PATH`].
pub const CA_FILE: &str = "ca.crt";

#[cfg(test)]
mod tests {
    use pgwarden_crds::{MAX_CLUSTER_NAME_LENGTH, MAX_INSTANCES_EVER};

    /// Admission caps Cluster names at `MAX_CLUSTER_NAME_LENGTH` (from the longest suffix):
    /// every name derived here from a name that long must fit a DNS-1035 label of 63
    /// characters, so a new, longer suffix fails here until the cap follows it.
    #[test]
    fn every_derived_name_of_the_longest_cluster_name_fits_63_characters() {
        let cluster = format!("a{}", "b".repeat(MAX_CLUSTER_NAME_LENGTH - 1));
        let mut derived = vec![
            super::settings_config_map(&cluster),
            super::service_rw(&cluster),
            super::service_r(&cluster),
            super::service_any(&cluster),
            super::agent(&cluster),
            cluster.clone(),
        ];
        derived.extend((0..MAX_INSTANCES_EVER as u32).map(|i| super::instance(&cluster, i)));
        for name in derived {
            assert!(name.len() <= 63, "{name} has {} characters", name.len());
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name} is not a DNS-1035 label"
            );
        }
        assert_eq!(
            super::settings_config_map(&cluster).len(),
            63,
            "the cap is tight"
        );
    }
}
