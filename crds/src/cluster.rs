//! `Cluster`: a PostgreSQL cluster and its continuous backup to an S3-compatible store.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::common::{LocalObjectReference, SecretKeySelector};
use crate::settings::parameters;

/// The desired state of a PostgreSQL cluster.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "postgresql.k8s.2ndq.io",
    version = "v1alpha1",
    doc = "A PostgreSQL cluster with continuous backup (WAL archiving and base backups) to an S3-compatible object store.",
    kind = "Cluster",
    namespaced,
    status = "ClusterStatus",
    shortname = "pgc",
    category = "pgwarden",
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".spec.instances","description":"Desired number of instances"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyInstances","description":"Instances ready"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"What the cluster is doing"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".status.currentPrimary","description":"Pod of the primary instance"}"#,
    printcolumn = r#"{"name":"Last Archived WAL","type":"string","jsonPath":".status.archive.lastArchivedWal","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Number of PostgreSQL instances (pods): one primary (instance 1) and `instances - 1`
    /// hot standbys cloned from it and streaming from it; only the primary archives WAL.
    /// Never more than 9.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1))]
    #[schemars(extend("maximum" = MAX_INSTANCES_EVER))]
    pub instances: i32,
    /// Container image of the instances. The local sandbox runs the host's binaries instead.
    pub image_name: Option<String>,
    /// Storage of each instance's data directory.
    pub storage: Option<StorageConfiguration>,
    /// PostgreSQL configuration.
    pub postgresql: Option<PostgresConfiguration>,
    /// Compute resources of each instance pod. The policy may add defaults.
    pub resources: Option<ResourceRequirements>,
    /// How the cluster's first instance is created: a new database (initdb, the default) or
    /// a restore from a backup (recovery).
    pub bootstrap: Option<Bootstrap>,
    /// Name of the ReconcilePolicy that makes this cluster's decisions. Default: the
    /// operator's default policy.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253",
         "message": "spec.policy must be the name of a ReconcilePolicy: lowercase letters, digits, '-' and '.'"}
    ]))]
    pub policy: Option<String>,
    /// Continuous backup: WAL archiving and base backups to an S3-compatible object store.
    /// WAL archiving is enabled as soon as a destination path and credentials are set.
    pub backup: Option<ObjectStore>,
    /// Labels and annotations of the instance agent's ServiceAccount `<name>-agent`, which
    /// the instance pods run as: a cloud identity for the object store, declared here (IRSA:
    /// `eks.amazonaws.com/role-arn`; GKE Workload Identity: `iam.gke.io/gcp-service-account`;
    /// EKS Pod Identity associates a role with the ServiceAccount's name). A change updates
    /// the ServiceAccount in place.
    pub service_account_template: Option<crate::identity::ServiceAccountTemplate>,
    /// Plain environment variables of the instance container, which the archiver and backup
    /// tools inherit: e.g. `AWS_REQUEST_CHECKSUM_CALCULATION=when_required` for a non-AWS
    /// store with boto3 1.36 or later. Not the credentials and not pgwarden's own variables
    /// (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION,
    /// AWS_CA_BUNDLE, POD_NAME, POD_NAMESPACE, PGDATA, PGWARDEN_*). A change rolls out like
    /// any change of the pods: one pod replaced at a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend(
        "maxItems" = crate::identity::MAX_ENV,
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["name"]
    ))]
    pub env: Vec<crate::identity::EnvVar>,
}

fn default_instances() -> i32 {
    1
}

/// The most instances a Cluster runs: the operator never plans more pods than this, whatever
/// the stored spec or a policy says. Standbys stream from the primary and never archive, so
/// one destination has one archiver whatever the number.
pub const MAX_INSTANCES: i32 = MAX_INSTANCES_EVER;

/// The hard ceiling of `spec.instances` (the schema's `maximum`): the operator asks the
/// policy once per instance and holds every pod template, so the number must be small and
/// known; and the pod names `<name>-1` to `<name>-9` keep one digit, which
/// [`MAX_NAME_LENGTH`] counts on.
pub const MAX_INSTANCES_EVER: i32 = 9;

/// The longest suffix of a name derived from a Cluster's (`pgwarden_sdk::names`): the
/// settings ConfigMap `<name>-settings`. The others are `-rw`, `-r`, `-any`, `-agent` and
/// the pods' and claims' `-1` to `-9`.
pub const LONGEST_DERIVED_SUFFIX: &str = "-settings";

/// Services, label values and pod host names are limited to 63 characters.
pub const DNS_LABEL_LENGTH: usize = 63;

/// The longest Cluster name admission accepts: every name derived from it (the Services, the
/// ConfigMap, the agent's ServiceAccount, Role and RoleBinding, the pods and claims) and the
/// label value `postgresql.k8s.2ndq.io/cluster` then fit in 63 characters.
pub const MAX_NAME_LENGTH: usize = DNS_LABEL_LENGTH - LONGEST_DERIVED_SUFFIX.len();

/// The root-level CEL rules of the Cluster CRD, on `metadata.name` (the one field of
/// `metadata` a CRD's rules may read): a name that a derived object cannot carry is refused
/// at admission, rather than left with an empty status after the operator's first create
/// fails.
pub fn name_rules() -> serde_json::Value {
    serde_json::json!([
        {"rule": format!("size(self.metadata.name) <= {MAX_NAME_LENGTH}"),
         "message": format!("metadata.name must be at most {MAX_NAME_LENGTH} characters: it names the Services <name>-rw, <name>-r and <name>-any, the ConfigMap <name>-settings, the ServiceAccount, Role and RoleBinding <name>-agent and the pods and claims <name>-<n>, and is the value of the label postgresql.k8s.2ndq.io/cluster, each limited to {DNS_LABEL_LENGTH} characters")},
        {"rule": "self.metadata.name.matches('^[a-z][-a-z0-9]*$')",
         "message": "metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' (no '.'): it names the Services <name>-rw, <name>-r and <name>-any, which must be DNS-1035 labels"}
    ])
}

/// Storage of an instance's data directory (a PersistentVolumeClaim).
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageConfiguration {
    /// Size of the volume, as a Kubernetes quantity (e.g. `1Gi`).
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))",
         "message": "storage.size must be a positive Kubernetes quantity, like 1Gi or 500Mi"}
    ]))]
    pub size: Option<String>,
    /// StorageClass of the volume. Default: the cluster's default StorageClass.
    pub storage_class: Option<String>,
}

/// PostgreSQL configuration of the instances.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresConfiguration {
    /// Parameters written to postgresql.conf. A change reaches the running instance: by a
    /// reload, or by a restart of PostgreSQL (not of the pod) for the parameters PostgreSQL
    /// reads only at start; `status.parameters` says which. Names are PostgreSQL's (letters,
    /// digits, `_`, one `.` for an extension's parameter). pgwarden owns, in any case:
    /// `archive_*` settings, `restore_command`, `archive_cleanup_command`,
    /// `recovery_end_command`, `recovery_target*`, `primary_conninfo`, `primary_slot_name`,
    /// `promote_trigger_file`, `listen_addresses`, `port`, `unix_socket_directories`,
    /// `data_directory`, `hba_file`, `ident_file`, `config_file` and `include*`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = parameters::MAX_PARAMETERS,
        "additionalProperties" = {"type": "string", "maxLength": parameters::MAX_VALUE_LENGTH}
    ))]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": (parameters::name_rule()),
         "message": "spec.postgresql.parameters: a name is not a PostgreSQL parameter name",
         "messageExpression": (parameters::name_message())},
        {"rule": (parameters::reserved_rule()),
         "message": "spec.postgresql.parameters must not set a parameter pgwarden owns",
         "messageExpression": (parameters::reserved_message())},
        {"rule": (parameters::WAL_LEVEL_RULE),
         "message": "spec.postgresql.parameters.wal_level minimal cannot archive WAL: use replica or logical"}
    ]))]
    pub parameters: BTreeMap<String, String>,
}

/// How the first instance is created. Exactly one of `initdb` and `recovery`.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!(has(self.initdb) && has(self.recovery))",
     "message": "spec.bootstrap: set either initdb or recovery, not both"}
]))]
pub struct Bootstrap {
    /// Create a new, empty database cluster with initdb.
    pub initdb: Option<BootstrapInitDb>,
    /// Restore from a base backup and replay WAL from the object store.
    pub recovery: Option<BootstrapRecovery>,
}

/// Options of a new database cluster.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapInitDb {
    /// Name of an application database to create. Default: none.
    pub database: Option<String>,
    /// Owner of the application database. Default: same as the database name.
    pub owner: Option<String>,
}

/// Where to restore from, and up to which point.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.backup) != has(self.source)",
     "message": "spec.bootstrap.recovery: set exactly one of backup (a Backup object) or source (an object store, with an optional backupID)"},
    {"rule": "!has(self.backupID) || has(self.source)",
     "message": "spec.bootstrap.recovery.backupID needs spec.bootstrap.recovery.source: a Backup object already names its backup"}
]))]
pub struct BootstrapRecovery {
    /// A completed Backup in the same namespace to restore.
    pub backup: Option<LocalObjectReference>,
    /// An object store to restore from, when there is no Backup object (e.g. another
    /// Kubernetes cluster's backups).
    pub source: Option<ObjectStore>,
    /// The barman backup id to restore from `source`. Default: the latest backup that
    /// can reach the recovery target.
    #[serde(rename = "backupID")]
    pub backup_id: Option<String>,
    /// Point in time to stop recovery at. Default: replay all archived WAL.
    pub recovery_target: Option<RecoveryTarget>,
}

/// A PostgreSQL recovery target. At most one of the targets may be set.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "[has(self.targetTime), has(self.targetLSN), has(self.targetXID), has(self.targetName), has(self.targetImmediate) && self.targetImmediate].filter(x, x).size() <= 1",
     "message": "spec.bootstrap.recovery.recoveryTarget: set at most one of targetTime, targetLSN, targetXID, targetName, targetImmediate"}
]))]
pub struct RecoveryTarget {
    /// Stop at this timestamp (RFC 3339, e.g. `2026-11-25T10:00:00Z`).
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\\\\.[0-9]+)?(Z|[+-][0-9]{2}(:?[0-9]{2})?)$')",
         "message": "spec.bootstrap.recovery.recoveryTarget.targetTime must be an RFC 3339 timestamp with a zone, like 2026-11-25T10:00:00Z"}
    ]))]
    pub target_time: Option<String>,
    /// Stop at this write-ahead log location (e.g. `0/3000060`).
    #[serde(rename = "targetLSN")]
    #[schemars(regex(pattern = r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"))]
    pub target_lsn: Option<String>,
    /// Stop at this transaction id.
    #[serde(rename = "targetXID")]
    #[schemars(regex(pattern = r"^[0-9]+$"))]
    pub target_xid: Option<String>,
    /// Stop at this restore point, created with `pg_create_restore_point()`.
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    pub target_immediate: Option<bool>,
    /// Stop just before the target instead of just after it. Default: false.
    pub exclusive: Option<bool>,
}

/// Where and how the cluster is backed up: an S3-compatible object store.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStore {
    /// URL of the folder that receives WAL files and base backups: `s3://BUCKET[/path]`.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^s3://[A-Za-z0-9][A-Za-z0-9._-]{1,254}(/.*)?$')",
         "message": "destinationPath must be an S3 URL: s3://BUCKET or s3://BUCKET/path/to/folder (bucket: letters, digits, dots, hyphens, underscores)"}
    ]))]
    pub destination_path: String,
    /// Endpoint of an S3-compatible store other than AWS, e.g. `https://minio.example:9000`.
    #[serde(rename = "endpointURL")]
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^https?://[^/?#\\\\s]+(/.*)?$')",
         "message": "endpointURL must be an http:// or https:// URL, like https://s3.example.com:9000"}
    ]))]
    pub endpoint_url: Option<String>,
    /// A Secret key holding the PEM bundle that signs the endpoint's certificate.
    #[serde(rename = "endpointCA")]
    pub endpoint_ca: Option<SecretKeySelector>,
    /// Name of this server's folder in the store. Default: the Cluster's name.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[A-Za-z0-9][A-Za-z0-9._-]*$')",
         "message": "serverName is one folder name: letters, digits, dots, hyphens and underscores"}
    ]))]
    pub server_name: Option<String>,
    /// Credentials for the object store, read by the instance pods from Secrets.
    pub s3_credentials: Option<S3Credentials>,
    /// WAL archiving options.
    pub wal: Option<WalBackupConfiguration>,
    /// Base backup options.
    pub data: Option<DataBackupConfiguration>,
    /// How long backups are kept: a recovery window of days, weeks or calendar months (`30d`,
    /// `4w`, `6m`), as barman's `RECOVERY WINDOW`: the newest backup that ended before the
    /// window stays too, as it restores to the window's first moment. Default: forever.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[1-9][0-9]*[dwm]$')",
         "message": "retentionPolicy must be a positive number of days, weeks or months, like 30d, 4w or 6m"}
    ]))]
    pub retention_policy: Option<String>,
}

/// Credentials for an S3-compatible store: an access key pair from Secrets, or the pod's IAM
/// role.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "(has(self.inheritFromIAMRole) && self.inheritFromIAMRole) != (has(self.accessKeyId) && has(self.secretAccessKey))",
     "message": "s3Credentials: set both accessKeyId and secretAccessKey, or inheritFromIAMRole: true (not both)"},
    {"rule": "has(self.accessKeyId) == has(self.secretAccessKey)",
     "message": "s3Credentials: accessKeyId and secretAccessKey go together: set both"}
]))]
pub struct S3Credentials {
    /// The Secret key holding the access key id (AWS_ACCESS_KEY_ID).
    pub access_key_id: Option<SecretKeySelector>,
    /// The Secret key holding the secret access key (AWS_SECRET_ACCESS_KEY).
    pub secret_access_key: Option<SecretKeySelector>,
    /// The Secret key holding a session token (AWS_SESSION_TOKEN), for temporary credentials.
    pub session_token: Option<SecretKeySelector>,
    /// The Secret key holding the region (AWS_DEFAULT_REGION).
    pub region: Option<SecretKeySelector>,
    /// Use the credentials of the pod's IAM role instead of keys.
    #[serde(rename = "inheritFromIAMRole")]
    pub inherit_from_iam_role: Option<bool>,
}

/// WAL archiving options.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.sseKmsKeyId) || (has(self.encryption) && self.encryption == 'aws:kms')",
     "message": "wal.sseKmsKeyId names an AWS KMS key: it needs wal.encryption: aws:kms"}
]))]
pub struct WalBackupConfiguration {
    /// Compression of WAL files as they are uploaded. Default: none (the policy may choose).
    pub compression: Option<WalCompression>,
    /// Server-side encryption of WAL files in the bucket: `AES256` (keys managed by the store)
    /// or `aws:kms` (keys in AWS KMS). Default: the bucket's own.
    pub encryption: Option<Encryption>,
    /// The AWS KMS key of `encryption: aws:kms` (key id, key ARN, alias name or alias ARN),
    /// as barman-cloud-wal-archive's `--sse-kms-key-id`. Default: the store's default key.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[A-Za-z0-9:/_.+=,@-]+$')",
         "message": "sseKmsKeyId is a KMS key id, key ARN, alias name or alias ARN (letters, digits and :/_.+=,@-, at most 2048)"}
    ]))]
    #[schemars(length(min = 1, max = 2048))]
    pub sse_kms_key_id: Option<String>,
    /// How many WAL files are archived in parallel. Default: 1.
    #[schemars(range(min = 1, max = 32))]
    pub max_parallel: Option<i32>,
}

/// Base backup options.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.sseKmsKeyId) || (has(self.encryption) && self.encryption == 'aws:kms')",
     "message": "data.sseKmsKeyId names an AWS KMS key: it needs data.encryption: aws:kms"}
]))]
pub struct DataBackupConfiguration {
    /// Compression of the base backup's files. Default: none (the policy may choose).
    pub compression: Option<DataCompression>,
    /// Server-side encryption of the base backup in the bucket: `AES256` (keys managed by the
    /// store) or `aws:kms` (keys in AWS KMS). Default: the bucket's own.
    pub encryption: Option<Encryption>,
    /// The AWS KMS key of `encryption: aws:kms` (key id, key ARN, alias name or alias ARN),
    /// as barman-cloud-backup's `--sse-kms-key-id`. Default: the store's default key.
    #[schemars(extend("x-kubernetes-validations" = [
        {"rule": "self.matches('^[A-Za-z0-9:/_.+=,@-]+$')",
         "message": "sseKmsKeyId is a KMS key id, key ARN, alias name or alias ARN (letters, digits and :/_.+=,@-, at most 2048)"}
    ]))]
    #[schemars(length(min = 1, max = 2048))]
    pub sse_kms_key_id: Option<String>,
    /// Number of parallel upload jobs. Default: 2.
    #[schemars(range(min = 1, max = 64))]
    pub jobs: Option<i32>,
    /// Start the backup with an immediate checkpoint instead of a spread one. Default: false.
    pub immediate_checkpoint: Option<bool>,
}

/// Compression of WAL files (the options of barman-cloud-wal-archive).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WalCompression {
    Gzip,
    Bzip2,
    Snappy,
    Lz4,
    Xz,
    Zstd,
}

/// Compression of base backups (the options of barman-cloud-backup).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DataCompression {
    Gzip,
    Bzip2,
    Snappy,
    Lz4,
}

/// Server-side encryption of objects in the bucket: `AES256` (keys managed by the store) or
/// `aws:kms` (keys in AWS KMS). A hash such as SHA256 is not an encryption.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encryption {
    #[serde(rename = "AES256")]
    Aes256,
    #[serde(rename = "aws:kms")]
    AwsKms,
}

impl Encryption {
    /// The value as written in the manifest and passed to barman (`-e`).
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::Aes256 => "AES256",
            Encryption::AwsKms => "aws:kms",
        }
    }
}

impl JsonSchema for Encryption {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Encryption".into()
    }

    // A string checked by CEL rather than an OpenAPI enum: an enum violation stops the API
    // server before CEL runs, and only CEL can say why SHA256 is wrong.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Server-side encryption in the bucket: AES256 or aws:kms. Default: the bucket's own encryption.",
            "x-kubernetes-validations": [{
                "rule": "self in ['AES256', 'aws:kms']",
                "messageExpression": "(self.lowerAscii().matches('^(sha|md5|blake|crc)') ? self + ' is a hash, not an encryption' : 'unsupported encryption ' + self) + ': accepted values are AES256 and aws:kms'"
            }]
        })
    }
}

/// The observed state of a Cluster. Facts (the `archive` block) are written by the instance
/// agent; phase and conditions by the operator from the policy's decisions.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    /// What the cluster is doing, in a few words.
    pub phase: Option<String>,
    /// Number of instance pods.
    pub instances: Option<i32>,
    /// Number of instance pods that are ready.
    pub ready_instances: Option<i32>,
    /// Pod name of the primary instance.
    pub current_primary: Option<String>,
    /// Pod name of the instance that is to be the primary: set by the operator when the
    /// policy's failover decision or a switchover request names a standby (checked by the
    /// host first); that instance's agent promotes it, and a primary that is not it fences
    /// itself.
    pub target_primary: Option<String>,
    /// Each instance as its agent last reported it (each agent applies its own entry).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub instances_status: Vec<InstanceStatus>,
    /// Ready, ContinuousArchiving, LastBackupSucceeded, PolicyApplied, PodsUpToDate, and
    /// RetentionApplied (False, naming the policy, when its retention decision failed; set by
    /// the retention alone, under its field manager `pgwarden-retention`).
    // A list map keyed by type (the Kubernetes convention): each condition has one owner.
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// WAL archiving facts, as the primary's agent last reported them.
    pub archive: Option<ArchiveStatus>,
    /// How the agent applied `spec.postgresql.parameters` (reload or restart), what waits
    /// for a restart and what PostgreSQL refused.
    pub parameters: Option<parameters::ParametersStatus>,
    /// The earliest point in time the cluster can be restored to.
    pub first_recoverability_point: Option<String>,
    /// Name of the most recent completed Backup.
    pub last_successful_backup: Option<String>,
    /// Name of the most recent failed Backup.
    pub last_failed_backup: Option<String>,
    /// The reconcile policy whose decisions are in force.
    pub policy: Option<PolicyInForce>,
    /// The generation of the spec the status describes.
    pub observed_generation: Option<i64>,
}

/// WAL archiving facts reported by the primary's instance agent.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// Pod whose agent reported these facts.
    pub pod_name: Option<String>,
    /// Number of WAL files archived (pg_stat_archiver.archived_count).
    pub archived_count: Option<i64>,
    /// Last WAL file archived.
    pub last_archived_wal: Option<String>,
    /// When the last WAL file was archived.
    pub last_archived_time: Option<String>,
    /// Number of failed archive attempts (pg_stat_archiver.failed_count).
    pub failed_count: Option<i64>,
    /// Last WAL file whose archiving failed.
    pub last_failed_wal: Option<String>,
    /// When archiving last failed.
    pub last_failed_time: Option<String>,
    /// Why archiving last failed, as the archive command reported it.
    pub last_failure: Option<String>,
    /// WAL files waiting to be archived (`.ready` files).
    pub ready_segments: Option<i64>,
    /// Age in seconds of the oldest WAL file waiting to be archived.
    pub oldest_ready_age_seconds: Option<i64>,
    /// Whether the destination passed barman-cloud-check-wal-archive.
    pub destination_checked: Option<bool>,
    /// When the agent last reported.
    pub reported_at: Option<String>,
}

/// One instance's replication facts, as its agent reported them. The agent reports only
/// while PostgreSQL answers, so an old `reportedAt` means an agent or a PostgreSQL gone silent.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// Pod name of the instance.
    pub name: String,
    /// `primary` or `replica`, from `pg_is_in_recovery()`.
    pub role: Option<String>,
    /// PostgreSQL accepts connections.
    pub ready: Option<bool>,
    /// `pg_is_in_recovery()`.
    pub in_recovery: Option<bool>,
    /// A standby's WAL receiver is streaming from the primary.
    pub streaming: Option<bool>,
    /// `default_transaction_read_only` is on: a primary its agent fenced because it is not
    /// `targetPrimary`.
    pub read_only: Option<bool>,
    /// WAL received from the primary (standby), or written (primary).
    pub received_lsn: Option<String>,
    /// WAL replayed (standby), or written (primary).
    pub replayed_lsn: Option<String>,
    /// Bytes of WAL received but not replayed yet.
    pub lag_bytes: Option<i64>,
    /// Seconds since the last replayed transaction's commit on the primary (0 when all
    /// received WAL is replayed).
    pub lag_seconds: Option<i64>,
    /// When the agent reported (RFC 3339).
    pub reported_at: Option<String>,
}

/// The policy that made the cluster's decisions.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyInForce {
    /// Name of the ReconcilePolicy, or `default` for the operator's built-in module.
    pub name: Option<String>,
    /// sha256 of the WebAssembly module.
    pub digest: Option<String>,
}
