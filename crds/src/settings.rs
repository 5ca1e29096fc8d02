//! Decided settings as the instance agent reads them.
//!
//! The operator asks the policy for archive and backup settings and writes the answer as JSON
//! into a ConfigMap mounted in every instance pod ([`ARCHIVE_SETTINGS_KEY`]). The agent and
//! `pgwarden instance wal-archive` read it on every call, so a new decision needs no restart.
//! No secret is ever part of these settings: credentials reach the pod as environment
//! variables from `secretKeyRef`. The Cluster's PostgreSQL parameters travel the same way
//! ([`PARAMETERS_KEY`]; see [`parameters`] for which names are allowed and what the agent
//! reports).

use serde::{Deserialize, Serialize};

use crate::SecretKeySelector;
use crate::cluster::{DataCompression, Encryption, S3Credentials, WalCompression};

pub mod parameters;

/// Key of the settings ConfigMap (and file name in the mounted folder).
pub const ARCHIVE_SETTINGS_KEY: &str = "archive.json";
/// Key of the settings ConfigMap holding the Cluster's `spec.postgresql.parameters` as a JSON
/// object (always present, `{}` when there are none): the agent applies a change while
/// PostgreSQL runs, so a change never recreates the pod.
pub const PARAMETERS_KEY: &str = "parameters.json";
/// Where instance pods mount the settings ConfigMap.
pub const SETTINGS_MOUNT_PATH: &str = "/etc/pgwarden";

/// Environment variables the instance pod gets its store credentials from.
pub mod env {
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    pub const REGION: &str = "AWS_DEFAULT_REGION";
}

/// One Secret key an [`S3Credentials`] names: the field (as in the manifest), the
/// environment variable the instance pod gets its value in, and the selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CredentialKey<'a> {
    /// The field's name in `s3Credentials` (`accessKeyId`...).
    pub field: &'static str,
    /// The variable of [`env`] it becomes in the instance pod.
    pub env: &'static str,
    pub selector: &'a SecretKeySelector,
}

impl S3Credentials {
    /// The Secret keys that are set, in manifest order: the one list of the credential fields
    /// that the pod's environment, the Secret reads and the guardrails use.
    pub fn selectors(&self) -> impl Iterator<Item = CredentialKey<'_>> {
        [
            ("accessKeyId", env::ACCESS_KEY_ID, &self.access_key_id),
            (
                "secretAccessKey",
                env::SECRET_ACCESS_KEY,
                &self.secret_access_key,
            ),
            ("sessionToken", env::SESSION_TOKEN, &self.session_token),
            ("region", env::REGION, &self.region),
        ]
        .into_iter()
        .filter_map(|(field, env, selector)| {
            selector.as_ref().map(|selector| CredentialKey {
                field,
                env,
                selector,
            })
        })
    }
}

/// How WAL is archived: the arguments of barman-cloud-wal-archive, without secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSettings {
    /// `s3://bucket/path`.
    pub destination_path: String,
    /// S3-compatible endpoint, if not AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Path of a CA bundle for the endpoint, inside the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_ca_file: Option<String>,
    /// Server folder name in the store.
    pub server_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<WalCompression>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The KMS key of `aws:kms` (barman's `--sse-kms-key-id`). Not part of the policy ABI:
    /// the operator copies it from `spec.backup.wal.sseKmsKeyId` after the policy decided
    /// `aws:kms` (a policy decides whether to encrypt, the Cluster names its key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// WAL files archived in parallel (1 = no pre-archiving).
    pub max_parallel: u32,
    /// PostgreSQL's `archive_timeout`, in seconds (0 = off).
    pub archive_timeout_seconds: u32,
    /// The program that archives WAL.
    #[serde(default)]
    pub archiver: Archiver,
    /// Where a new standby's data comes from (settings written before it existed: the primary).
    #[serde(default)]
    pub standby_clone: CloneSource,
}

/// Where a new standby is cloned from: a policy decision, carried with the archive settings
/// because the store is the one they name (a Cluster that archives nowhere clones from the
/// primary).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum CloneSource {
    /// `pg_basebackup` from the primary over a replication connection: a fresh copy, needing
    /// no base backup in the store, read from the primary's disks and network.
    #[default]
    Primary,
    /// `barman-cloud-restore` of the store's latest base backup, then WAL from the archive
    /// until the standby streams: the primary serves only the last WAL.
    ObjectStore,
}

/// The program that archives WAL (and takes base backups).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Archiver {
    /// The Barman cloud tools (`barman-cloud-wal-archive`).
    #[default]
    BarmanCloud,
    /// pgwarden's own archiver.
    Native,
}

/// How a base backup is taken: the arguments of barman-cloud-backup, without secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSettings {
    /// The pod that takes the backup.
    pub target_pod: String,
    /// Compression of the backup's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<DataCompression>,
    /// Server-side encryption in the bucket: `AES256` or `aws:kms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The KMS key of `aws:kms`, copied by the operator from `spec.backup.data.sseKmsKeyId`
    /// as for [`ArchiveSettings::sse_kms_key_id`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sse_kms_key_id: Option<String>,
    /// Parallel upload jobs.
    pub jobs: u32,
    /// Whether the backup starts with an immediate checkpoint.
    pub immediate_checkpoint: bool,
}

/// Conventions of an instance pod shared by the policy (which writes the pod template), the
/// planner and the instance agent (which reads them).
pub mod pod {
    /// Name of the container running `pgwarden instance run`.
    pub const CONTAINER: &str = "postgres";
    /// Env: name of the Cluster.
    pub const ENV_CLUSTER: &str = "PGWARDEN_CLUSTER";
    /// Env: name of the pod (downward API).
    pub const ENV_POD_NAME: &str = "POD_NAME";
    /// Env: namespace of the pod (downward API).
    pub const ENV_NAMESPACE: &str = "POD_NAMESPACE";
    /// Env: the data directory.
    pub const ENV_PGDATA: &str = "PGDATA";
    /// Env: folder of the mounted settings ConfigMap.
    pub const ENV_SETTINGS_DIR: &str = "PGWARDEN_SETTINGS_DIR";
    /// Where the data volume (PVC) is mounted.
    pub const DATA_MOUNT: &str = "/var/lib/postgresql/data";
    /// PGDATA inside the data volume.
    pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
    /// PostgreSQL's port.
    pub const PORT: i32 = 5432;
    /// Label on every object of a Cluster: its name.
    pub const LABEL_CLUSTER: &str = "postgresql.k8s.2ndq.io/cluster";
    /// Label on instance pods: `primary` or `replica`.
    pub const LABEL_ROLE: &str = "postgresql.k8s.2ndq.io/role";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Option<SecretKeySelector> {
        Some(SecretKeySelector {
            name: name.into(),
            key: "k".into(),
        })
    }

    /// Every selector field of the type is listed, under the name the manifest spells it: a
    /// field added to `S3Credentials` (this literal stops compiling) but not to `selectors()`
    /// fails here.
    #[test]
    fn selectors_list_every_secret_field_of_s3_credentials() {
        let creds = S3Credentials {
            access_key_id: key("a"),
            secret_access_key: key("s"),
            session_token: key("t"),
            region: key("r"),
            inherit_from_iam_role: None,
        };
        let json = serde_json::to_value(&creds).unwrap();
        let mut in_manifest: Vec<&str> = json
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.get("key").is_some())
            .map(|(k, _)| k.as_str())
            .collect();
        let mut listed: Vec<&str> = creds.selectors().map(|k| k.field).collect();
        in_manifest.sort();
        listed.sort();
        assert_eq!(listed, in_manifest);
        let envs: Vec<(&str, &str)> = creds
            .selectors()
            .map(|k| (k.env, k.selector.name.as_str()))
            .collect();
        assert_eq!(
            envs,
            [
                (env::ACCESS_KEY_ID, "a"),
                (env::SECRET_ACCESS_KEY, "s"),
                (env::SESSION_TOKEN, "t"),
                (env::REGION, "r"),
            ]
        );
    }

    #[test]
    fn selectors_skip_unset_fields() {
        let creds = S3Credentials {
            session_token: key("t"),
            ..Default::default()
        };
        let fields: Vec<&str> = creds.selectors().map(|k| k.field).collect();
        assert_eq!(fields, ["sessionToken"]);
    }
}
