//! A Cluster's objects from the policy's decisions: a Pod and a PersistentVolumeClaim per
//! instance, three Services, the settings ConfigMap, and the agent's identity (a
//! ServiceAccount the pods run as, with a Role that lets the agent watch Backups and report
//! facts on the Cluster's and Backups' status, see [`agent_rules`]); all owned by the Cluster.
//!
//! A Cluster bootstrapped by `recovery` gets its restore from [`recovery`]: the Backup (or
//! source store) resolved to a backup id and the source's archive settings, added by the host
//! to the policy's pod as the agent's `--restore-*`/`--target-*` arguments and to the settings
//! ConfigMap as [`RESTORE_SOURCE_KEY`]. It is facts, not a decision: which backup a Backup
//! object names is in its status, which the policy does not see.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod,
    PodTemplateSpec, Service, ServiceAccount, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject as RbacSubject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use pgwarden_crds::settings::{
    ARCHIVE_SETTINGS_KEY, ArchiveSettings, SETTINGS_MOUNT_PATH, env, pod,
};
use pgwarden_crds::{Backup, BackupPhase, Cluster, ObjectStore, RecoveryTarget, S3Credentials};
use pgwarden_sdk::names;
use serde::Serialize;

use super::actions::{Action, ObjectRef};
use super::errors::GuardrailError;
use super::guardrails::{self, Subject};
use crate::policy::{Policy, PolicyError};

/// What the policy decided for a Cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDecisions {
    pub archive: Option<ArchiveSettings>,
    /// One pod template per instance.
    pub pods: Vec<PodTemplateSpec>,
}

impl ClusterDecisions {
    /// Asks `policy` for every decision of `cluster`.
    pub fn from_policy(policy: &Policy, cluster: &Cluster) -> Result<Self, PolicyError> {
        let archive = policy.archive_settings(cluster)?;
        let count = super::instances::planned_instances(cluster);
        let pods = (0..count)
            .map(|i| policy.instance_pod(cluster, i))
            .collect::<Result<_, _>>()?;
        Ok(ClusterDecisions { archive, pods })
    }
}

/// The subject of a Cluster's reconcile.
pub fn subject(cluster: &Cluster) -> Subject {
    Subject {
        object: reference(cluster),
        uid: cluster.metadata.uid.clone().unwrap_or_default(),
        cluster: name(cluster).into(),
    }
}

/// An object's reference.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef {
    ObjectRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: object.meta().namespace.clone(),
        name: object.meta().name.clone().unwrap_or_default(),
    }
}

fn name(cluster: &Cluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
}

/// The controller owner reference to `cluster`.
pub fn owner(cluster: &Cluster) -> OwnerReference {
    cluster.controller_owner_ref(&()).unwrap_or_default()
}

fn meta(cluster: &Cluster, object_name: String, extra: BTreeMap<String, String>) -> ObjectMeta {
    let mut labels = extra;
    labels.insert(pod::LABEL_CLUSTER.into(), name(cluster).into());
    ObjectMeta {
        name: Some(object_name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner(cluster)]),
        ..Default::default()
    }
}

fn apply<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Action {
    Action::Apply {
        target: reference(object),
        object: serde_json::to_value(object).unwrap_or_default(),
    }
}

/// The actions that bring a Cluster's objects to what the policy decided. Refuses a pod
/// template that reaches outside the Cluster (see [`guardrails::pod`]).
pub fn plan_cluster(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
) -> Result<Vec<Action>, GuardrailError> {
    plan_cluster_restoring(cluster, decisions, Bootstrap::Decided(None))
}

/// How the instance pods start: from the decisions alone, with a restore, or not yet (a
/// recovery waiting for its Backup: every object but the pods).
#[derive(Clone, Copy, Debug)]
pub enum Bootstrap<'a> {
    Decided(Option<&'a Restore>),
    Waiting,
}

/// [`plan_cluster`], for a Cluster bootstrapped by `recovery`: the restore added to every
/// instance pod ([`with_restore`]) and its source to the settings ConfigMap.
pub fn plan_cluster_restoring(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
    bootstrap: Bootstrap<'_>,
) -> Result<Vec<Action>, GuardrailError> {
    let cluster_name = name(cluster);
    let restore = match bootstrap {
        Bootstrap::Decided(restore) => restore,
        Bootstrap::Waiting => None,
    };
    let mut config_map = settings_config_map(cluster, decisions.archive.as_ref());
    if let Some(restore) = restore {
        config_map.data.get_or_insert_with(BTreeMap::new).insert(
            RESTORE_SOURCE_KEY.into(),
            serde_json::to_string_pretty(&restore.source).unwrap_or_default(),
        );
    }
    // The agent's identity first: admission refuses a pod whose ServiceAccount is missing.
    let mut actions = vec![
        apply(&service_account(cluster)),
        apply(&agent_role(cluster)),
        apply(&agent_role_binding(cluster)),
        apply(&config_map),
    ];
    let planned = super::instances::planned_instances(cluster) as usize;
    for (i, template) in decisions.pods.iter().enumerate().take(planned) {
        actions.push(apply(&claim(cluster, i as u32)));
        if matches!(bootstrap, Bootstrap::Waiting) {
            continue;
        }
        let template = match restore {
            Some(r) => with_restore(template, r),
            None => template.clone(),
        };
        let pod_name = names::instance(name(cluster), i as u32);
        guardrails::pod::check_pod_template(
            cluster,
            &pod_name,
            &template,
            &restore_secrets(restore),
        )?;
        actions.push(apply(&build_pod(cluster, pod_name, &template)));
    }
    for (service, role) in [
        (names::service_rw(cluster_name), Some("primary")),
        (names::service_r(cluster_name), Some("replica")),
        (names::service_any(cluster_name), None),
    ] {
        actions.push(apply(&self::service(cluster, service, role)));
    }
    Ok(actions)
}

/// What the instance agent of Cluster `cluster` may do, in its namespace only: watch the
/// Backups (to take the ones that target its pod), write the status of Backups (its facts on
/// the backups it takes: their names are not known ahead) and of its own Cluster only.
/// Nothing else: no Secrets (credentials reach it as env), no pods, no ConfigMaps (deletion
/// requests reach it in its settings ConfigMap, which only the operator writes).
pub fn agent_rules(cluster: &str) -> Vec<PolicyRule> {
    let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![pgwarden_crds::GROUP.into()]),
        resources: Some(resources.iter().map(|r| r.to_string()).collect()),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    };
    let own = PolicyRule {
        resource_names: Some(vec![cluster.into()]),
        ..rule(&["clusters/status"], &["get", "patch"])
    };
    vec![
        rule(&["backups"], &["get", "list", "watch"]),
        rule(&["backups/status"], &["get", "patch"]),
        own,
    ]
}

/// The ServiceAccount the instance pods run as: `<cluster>-agent`.
pub fn service_account(cluster: &Cluster) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(cluster, names::agent(name(cluster)), BTreeMap::new()),
        ..Default::default()
    }
}

/// The Role of the agent: [`agent_rules`].
pub fn agent_role(cluster: &Cluster) -> Role {
    Role {
        metadata: meta(cluster, names::agent(name(cluster)), BTreeMap::new()),
        rules: Some(agent_rules(name(cluster))),
    }
}

/// Binds the agent's Role to its ServiceAccount.
pub fn agent_role_binding(cluster: &Cluster) -> RoleBinding {
    let agent = names::agent(name(cluster));
    RoleBinding {
        metadata: meta(cluster, agent.clone(), BTreeMap::new()),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: agent.clone(),
        },
        subjects: Some(vec![RbacSubject {
            kind: "ServiceAccount".into(),
            name: agent,
            namespace: cluster.metadata.namespace.clone(),
            ..Default::default()
        }]),
    }
}

/// `<cluster>-settings` with `archive.json` (absent when archiving is off) and
/// `parameters.json`, the Cluster's `spec.postgresql.parameters` (always present, `{}` when
/// none: removing the last parameter changes the key rather than removing it). The agent
/// applies a change of either while PostgreSQL runs, so neither is in the pod template.
pub fn settings_config_map(cluster: &Cluster, archive: Option<&ArchiveSettings>) -> ConfigMap {
    let parameters = cluster
        .spec
        .postgresql
        .as_ref()
        .map(|p| p.parameters.clone())
        .unwrap_or_default();
    let mut data = BTreeMap::from([(
        pgwarden_crds::settings::PARAMETERS_KEY.to_string(),
        serde_json::to_string_pretty(&parameters).unwrap_or_default(),
    )]);
    if let Some(a) = archive {
        data.insert(
            ARCHIVE_SETTINGS_KEY.to_string(),
            serde_json::to_string_pretty(a).unwrap_or_default(),
        );
    }
    let data = Some(data);
    ConfigMap {
        metadata: meta(
            cluster,
            names::settings_config_map(name(cluster)),
            BTreeMap::new(),
        ),
        data,
        ..Default::default()
    }
}

/// The data volume claim of instance `instance`.
pub fn claim(cluster: &Cluster, instance: u32) -> PersistentVolumeClaim {
    let storage = cluster.spec.storage.clone().unwrap_or_default();
    let size = storage.size.unwrap_or_else(|| "1Gi".into());
    PersistentVolumeClaim {
        metadata: meta(
            cluster,
            names::instance(name(cluster), instance),
            BTreeMap::new(),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class,
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(size))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Service selecting the Cluster's pods, optionally of one role.
pub fn service(cluster: &Cluster, service_name: String, role: Option<&str>) -> Service {
    let mut selector =
        BTreeMap::from([(pod::LABEL_CLUSTER.to_string(), name(cluster).to_string())]);
    if let Some(role) = role {
        selector.insert(pod::LABEL_ROLE.into(), role.into());
    }
    Service {
        metadata: meta(cluster, service_name, BTreeMap::new()),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: pod::PORT,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The Pod of instance `instance` from the policy's template (checked by
/// [`guardrails::pod::check_pod_template`]): name, owner and cluster label set by the host; the
/// namespace is the template's if it has one (the guardrails refuse a foreign one), else the
/// Cluster's.
fn build_pod(cluster: &Cluster, pod_name: String, template: &PodTemplateSpec) -> Pod {
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut metadata = meta(cluster, pod_name, template_meta.labels.unwrap_or_default());
    metadata.annotations = template_meta.annotations;
    if let Some(ns) = template_meta.namespace {
        metadata.namespace = Some(ns);
    }
    // The agent runs as the Cluster's own ServiceAccount (the guardrail refuses another).
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.service_account_name = Some(names::agent(name(cluster)));
    Pod {
        metadata,
        spec: Some(spec),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Recovery: `spec.bootstrap.recovery` resolved to a restore of the first start.

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
    let own = cluster.spec.backup.as_ref();
    let (store, backup_id) = match (&recovery.backup, &recovery.source) {
        (Some(reference), _) => from_backup(cluster, &reference.name, backup, backup_cluster)?,
        (None, Some(source)) => {
            let server = source
                .server_name
                .clone()
                .unwrap_or_else(|| name(cluster).into());
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
    let mine = own.and_then(|o| o.s3_credentials.as_ref());
    let credentials = match (mine, store.s3_credentials.as_ref()) {
        (Some(mine), Some(theirs)) if mine != theirs => {
            return Err(wait(
                "RecoveryCredentialsDiffer",
                format!(
                    "the store to restore from ({}) has other s3Credentials than spec.backup: an instance gets one set of store credentials, so use the same Secret keys for both",
                    store.destination_path
                ),
            ));
        }
        (None, Some(theirs)) => Some(theirs.clone()),
        _ => None,
    };
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
    let source = ArchiveSettings {
        destination_path: store.destination_path.clone(),
        endpoint_url: store.endpoint_url.clone(),
        endpoint_ca_file,
        server_name: store.server_name.clone().unwrap_or_default(),
        compression: None,
        encryption: None,
        max_parallel: 1,
        archive_timeout_seconds: 0,
    };
    Ok(Some(Restore {
        backup_id,
        source,
        credentials,
        target: recovery.recovery_target.clone(),
    }))
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
    [
        (env::ACCESS_KEY_ID, &creds.access_key_id),
        (env::SECRET_ACCESS_KEY, &creds.secret_access_key),
        (env::SESSION_TOKEN, &creds.session_token),
        (env::REGION, &creds.region),
    ]
    .into_iter()
    .filter_map(|(var, selector)| {
        selector
            .as_ref()
            .map(|s| pgwarden_sdk::defaults::secret_env(var, s))
    })
    .collect()
}

/// The Secrets a restore's credentials name.
fn restore_secrets(restore: Option<&Restore>) -> BTreeSet<String> {
    let Some(creds) = restore.and_then(|r| r.credentials.as_ref()) else {
        return BTreeSet::new();
    };
    [
        &creds.access_key_id,
        &creds.secret_access_key,
        &creds.session_token,
        &creds.region,
    ]
    .into_iter()
    .flatten()
    .map(|s| s.name.clone())
    .collect()
}

#[cfg(test)]
mod recovery_tests {
    use super::*;
    use pgwarden_sdk::defaults;
    use serde_json::{Value, json};

    fn creds(secret: &str) -> Value {
        json!({
            "accessKeyId": {"name": secret, "key": "ACCESS_KEY_ID"},
            "secretAccessKey": {"name": secret, "key": "ACCESS_SECRET_KEY"},
        })
    }

    fn cluster(name: &str, spec: Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
            "kind": "Cluster",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}")},
            "spec": spec,
        }))
        .unwrap()
    }

    fn source_cluster() -> Cluster {
        cluster(
            "pg",
            json!({"backup": {
                "destinationPath": "s3://bucket/pg",
                "endpointURL": "http://127.0.0.1:9000",
                "s3Credentials": creds("aws-creds"),
            }}),
        )
    }

    fn restored(recovery: Value, own_secret: Option<&str>) -> Cluster {
        let mut spec = json!({"bootstrap": {"recovery": recovery}});
        if let Some(secret) = own_secret {
            spec["backup"] = json!({
                "destinationPath": "s3://bucket/restored",
                "endpointURL": "http://127.0.0.1:9000",
                "s3Credentials": creds(secret),
            });
        }
        cluster("restored", spec)
    }

    fn backup(phase: &str) -> Backup {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
            "kind": "Backup",
            "metadata": {"name": "backup-example", "namespace": "ns"},
            "spec": {"cluster": {"name": "pg"}},
            "status": {
                "phase": phase,
                "backupId": "20261125T063702",
                "destinationPath": "s3://bucket/pg",
                "serverName": "pg",
            },
        }))
        .unwrap()
    }

    fn from_backup_example() -> Value {
        json!({"backup": {"name": "backup-example"}})
    }

    #[test]
    fn a_cluster_without_recovery_restores_nothing() {
        assert_eq!(recovery(&source_cluster(), None, None), Ok(None));
    }

    #[test]
    fn a_completed_backup_gives_its_id_and_store() {
        let c = restored(from_backup_example(), Some("aws-creds"));
        let r = recovery(&c, Some(&backup("completed")), Some(&source_cluster()))
            .unwrap()
            .unwrap();
        assert_eq!(r.backup_id, "20261125T063702");
        assert_eq!(r.source.destination_path, "s3://bucket/pg");
        assert_eq!(r.source.server_name, "pg");
        assert_eq!(
            r.source.endpoint_url.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(r.credentials, None, "the Cluster's own credentials serve");
        assert_eq!(r.target, None);
    }

    #[test]
    fn an_absent_or_unfinished_backup_is_waited_for_by_name() {
        let c = restored(from_backup_example(), Some("aws-creds"));
        let absent = recovery(&c, None, None).unwrap_err();
        assert_eq!(absent.reason, "BackupNotFound");
        assert!(
            absent
                .message
                .contains("Backup ns/backup-example does not exist"),
            "{}",
            absent.message
        );
        let running = recovery(&c, Some(&backup("running")), Some(&source_cluster())).unwrap_err();
        assert_eq!(running.reason, "BackupNotCompleted");
        assert!(
            running
                .message
                .contains("Backup ns/backup-example is running, not completed"),
            "{}",
            running.message
        );
    }

    #[test]
    fn a_source_store_with_a_backup_id_and_a_target() {
        let c = restored(
            json!({
                "source": {
                    "destinationPath": "s3://other/folder",
                    "serverName": "old-pg",
                    "s3Credentials": creds("other-creds"),
                },
                "backupID": "20261124T000000",
                "recoveryTarget": {"targetTime": "2026-11-25T10:00:00Z", "exclusive": true},
            }),
            None,
        );
        let r = recovery(&c, None, None).unwrap().unwrap();
        assert_eq!(r.backup_id, "20261124T000000");
        assert_eq!(r.source.server_name, "old-pg");
        assert_eq!(
            r.credentials
                .as_ref()
                .unwrap()
                .access_key_id
                .as_ref()
                .unwrap()
                .name,
            "other-creds"
        );
        assert_eq!(
            restore_args(&r, "/etc/pgwarden"),
            [
                "--restore-backup",
                "20261124T000000",
                "--restore-source",
                "/etc/pgwarden/restore-source.json",
                "--target-time",
                "2026-11-25T10:00:00Z",
                "--target-exclusive",
            ]
        );
        // Without a backupID: the latest.
        let latest = restored(json!({"source": {"destinationPath": "s3://other/x"}}), None);
        let r = recovery(&latest, None, None).unwrap().unwrap();
        assert_eq!(
            (r.backup_id.as_str(), r.source.server_name.as_str()),
            ("latest", "restored")
        );
    }

    #[test]
    fn other_credentials_than_the_clusters_own_are_named() {
        let c = restored(
            json!({"source": {"destinationPath": "s3://other/x", "s3Credentials": creds("other-creds")}}),
            Some("aws-creds"),
        );
        let w = recovery(&c, None, None).unwrap_err();
        assert_eq!(w.reason, "RecoveryCredentialsDiffer");
    }

    fn decisions(cluster: &Cluster) -> ClusterDecisions {
        ClusterDecisions {
            archive: None,
            pods: vec![defaults::instance_pod(cluster, 0).unwrap().build()],
        }
    }

    fn applied<'a>(actions: &'a [Action], kind: &str) -> Option<&'a Value> {
        actions.iter().find_map(|a| match a {
            Action::Apply { target, object } if target.kind == kind => Some(object),
            _ => None,
        })
    }

    #[test]
    fn the_pod_restores_with_credentials_by_reference_only() {
        let c = restored(
            json!({
                "source": {"destinationPath": "s3://other/x", "s3Credentials": creds("other-creds")},
                "recoveryTarget": {"targetLSN": "0/3000060"},
            }),
            None,
        );
        let r = recovery(&c, None, None).unwrap().unwrap();
        let actions = plan_cluster_restoring(&c, &decisions(&c), Bootstrap::Decided(Some(&r)))
            .expect("the source's Secret is allowed for this pod");
        let pod = applied(&actions, "Pod").expect("a pod");
        let container = &pod["spec"]["containers"][0];
        assert_eq!(
            container["args"],
            json!([
                "--restore-backup",
                "latest",
                "--restore-source",
                "/etc/pgwarden/restore-source.json",
                "--target-lsn",
                "0/3000060"
            ])
        );
        let env = container["env"].as_array().unwrap();
        let key = env
            .iter()
            .find(|v| v["name"] == env::ACCESS_KEY_ID)
            .expect("the access key id");
        assert_eq!(
            key["valueFrom"]["secretKeyRef"]["name"], "other-creds",
            "{key}"
        );
        assert!(
            env.iter()
                .all(|v| v.get("value").is_none()
                    || !v["name"].as_str().unwrap().starts_with("AWS_"))
        );
        let config = applied(&actions, "ConfigMap").unwrap();
        let source: ArchiveSettings =
            serde_json::from_str(config["data"][RESTORE_SOURCE_KEY].as_str().unwrap()).unwrap();
        assert_eq!(source.destination_path, "s3://other/x");
        // The plain plan (no restore) has neither.
        let plain = plan_cluster(&c, &decisions(&c)).unwrap();
        assert!(applied(&plain, "Pod").unwrap()["spec"]["containers"][0]["args"].is_null());
    }

    #[test]
    fn a_waiting_recovery_plans_everything_but_the_pods() {
        let c = restored(from_backup_example(), Some("aws-creds"));
        let actions = plan_cluster_restoring(&c, &decisions(&c), Bootstrap::Waiting).unwrap();
        assert!(applied(&actions, "Pod").is_none());
        assert!(applied(&actions, "PersistentVolumeClaim").is_some());
        assert!(applied(&actions, "ConfigMap").is_some());
    }
}
