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
