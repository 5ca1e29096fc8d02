//! A Cluster's objects from the policy's decisions: a Pod and a PersistentVolumeClaim per
//! instance, three Services, the settings ConfigMap, and the agent's identity ([`super::rbac`]);
//! all owned by the Cluster. A Cluster bootstrapped by `recovery` gets its restore from
//! [`super::recovery`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, EnvVar, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodTemplateSpec,
    Secret, Service, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, ArchiveSettings, pod};
use pgwarden_sdk::names;
use pgwarden_sdk::types::{ClaimFacts, Storage};
use serde::Serialize;

use super::actions::Action;
use super::errors::GuardrailError;
use super::guardrails::{self, Subject};
use super::meta::{apply, cluster_name, object_meta, reference};
use super::rbac::{agent_role, agent_role_binding, service_account};
use super::recovery::{RESTORE_SOURCE_KEY, Restore, restore_secrets, with_restore};

/// What the policy decided for a Cluster.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterDecisions {
    pub archive: Option<ArchiveSettings>,
    /// One pod template per instance.
    pub pods: Vec<PodTemplateSpec>,
    /// The storage of each instance's data volume claim, one per instance.
    pub storage: Vec<Storage>,
}

/// The subject of a Cluster's reconcile.
pub fn subject(cluster: &Cluster) -> Subject {
    Subject {
        object: reference(cluster),
        uid: cluster.metadata.uid.clone().unwrap_or_default(),
        cluster: cluster_name(cluster).into(),
    }
}

/// The actions that bring a Cluster's objects to what the policy decided, for a fresh start.
/// Refuses a pod template that reaches outside the Cluster (see [`guardrails::pod`]).
pub fn plan_cluster(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
) -> Result<Vec<Action>, GuardrailError> {
    plan_cluster_restoring(cluster, decisions, Bootstrap::Fresh)
}

/// How the instance pods start.
#[derive(Clone, Copy, Debug)]
pub enum Bootstrap<'a> {
    /// From the decisions alone (initdb on an empty volume).
    Fresh,
    /// With a restore added to every pod: a recovery whose source is resolved.
    Restore(&'a Restore),
    /// Not yet: a recovery waiting for its Backup gets every object but the pods.
    Waiting,
}

impl<'a> Bootstrap<'a> {
    /// A restore when there is one, else a fresh start.
    pub fn from_restore(restore: Option<&'a Restore>) -> Self {
        restore.map_or(Bootstrap::Fresh, Bootstrap::Restore)
    }

    fn restore(self) -> Option<&'a Restore> {
        match self {
            Bootstrap::Restore(restore) => Some(restore),
            Bootstrap::Fresh | Bootstrap::Waiting => None,
        }
    }
}

/// [`plan_cluster`] with any [`Bootstrap`]: a restore is added to every instance pod
/// ([`with_restore`]) and its source to the settings ConfigMap. No claim observed: see
/// [`plan_cluster_observed`].
pub fn plan_cluster_restoring(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
    bootstrap: Bootstrap<'_>,
) -> Result<Vec<Action>, GuardrailError> {
    plan_cluster_observed(cluster, decisions, bootstrap, &[])
}

/// [`plan_cluster_restoring`] knowing the instances' claims as observed (`claims[i]` for
/// instance `i`; a shorter slice: not created yet), which the policy's storage is checked
/// against: a claim never shrinks nor changes class ([`guardrails::storage`]).
pub fn plan_cluster_observed(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
    bootstrap: Bootstrap<'_>,
    claims: &[Option<ClaimFacts>],
) -> Result<Vec<Action>, GuardrailError> {
    let restore = bootstrap.restore();
    let mut config_map = settings_config_map(cluster, decisions.archive.as_ref());
    let settings_name = format!(
        "ConfigMap {}/{}",
        config_map.metadata.namespace.as_deref().unwrap_or_default(),
        config_map.metadata.name.as_deref().unwrap_or_default()
    );
    guardrails::clone::check(cluster, decisions.archive.as_ref(), &settings_name)?;
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
        apply(&replication_secret(cluster)),
    ];
    let planned = super::instances::planned_instances(cluster) as usize;
    for (i, template) in decisions.pods.iter().enumerate().take(planned) {
        let current = claims.get(i).and_then(Option::as_ref);
        actions.push(claim_apply(
            cluster,
            i as u32,
            decisions.storage.get(i),
            current,
        )?);
        if !matches!(bootstrap, Bootstrap::Waiting) {
            actions.push(pod_apply(cluster, i as u32, template, restore)?);
        }
    }
    actions.extend(services(cluster).iter().map(apply));
    Ok(actions)
}

/// The apply of instance `instance`'s claim: the policy's storage, checked against the
/// claim as observed.
fn claim_apply(
    cluster: &Cluster,
    instance: u32,
    storage: Option<&Storage>,
    current: Option<&ClaimFacts>,
) -> Result<Action, GuardrailError> {
    let object = format!(
        "PersistentVolumeClaim {}/{}",
        cluster.metadata.namespace.as_deref().unwrap_or_default(),
        names::instance(cluster_name(cluster), instance)
    );
    let storage = storage.ok_or_else(|| GuardrailError::Invalid {
        object: object.clone(),
        detail: format!("the policy decided no storage for instance {instance}"),
    })?;
    let storage = guardrails::storage::settle(&object, storage, current)?;
    Ok(apply(&claim(cluster, instance, &storage)))
}

/// The apply of instance `instance`'s pod: the policy's template, with the restore if any,
/// checked by the pod guardrail.
fn pod_apply(
    cluster: &Cluster,
    instance: u32,
    template: &PodTemplateSpec,
    restore: Option<&Restore>,
) -> Result<Action, GuardrailError> {
    let template = match restore {
        Some(r) => with_restore(template, r),
        None => template.clone(),
    };
    let pod_name = names::instance(cluster_name(cluster), instance);
    let mut secrets = restore_secrets(restore);
    secrets.insert(names::replication_secret(cluster_name(cluster)));
    guardrails::pod::check_pod_template(cluster, &pod_name, &template, &secrets)?;
    let mut pod = build_pod(cluster, pod_name, &template);
    with_cluster_env(cluster, &mut pod)?;
    // Who is primary is the agents' report, not the pod's index nor the policy's word: the
    // `-rw`/`-r` Services select by this label (relabelled in place, see the applier).
    let role = match crate::failover::primary_pod(cluster)
        == pod.metadata.name.clone().unwrap_or_default()
    {
        true => "primary",
        false => "replica",
    };
    (pod.metadata.labels.get_or_insert_with(BTreeMap::new))
        .insert(pod::LABEL_ROLE.into(), role.into());
    Ok(apply(&pod))
}

/// Adds `spec.env` to the instance container: the host's, not the policy's, so that every
/// policy passes it to the archiver and backup tools. A name pgwarden sets is refused (the
/// CRD's rule refuses it at admission; this holds for a Cluster stored before the rule). The
/// error names the variable, never its value.
fn with_cluster_env(cluster: &Cluster, pod: &mut Pod) -> Result<(), GuardrailError> {
    if cluster.spec.env.is_empty() {
        return Ok(());
    }
    let object = format!(
        "Pod {}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let spec = pod.spec.get_or_insert_with(Default::default);
    let container = spec
        .containers
        .iter_mut()
        .find(|c| c.name == pod::CONTAINER);
    let Some(container) = container else {
        return Ok(());
    };
    let env = container.env.get_or_insert_with(Vec::new);
    for var in &cluster.spec.env {
        if pgwarden_crds::identity::is_reserved_env(&var.name) {
            return Err(GuardrailError::Invalid {
                object,
                detail: format!("spec.env must not set {}: pgwarden sets it", var.name),
            });
        }
        env.retain(|e| e.name != var.name);
        env.push(EnvVar {
            name: var.name.clone(),
            value: Some(var.value.clone()),
            ..Default::default()
        });
    }
    Ok(())
}

/// Marks a Secret the operator fills with a random value under the annotation's key when it
/// creates it, and never writes again (see `operator::generated`): the plan, its dry run
/// and its logs carry no password.
pub const GENERATE_ANNOTATION: &str = "postgresql.k8s.2ndq.io/generate";

/// `<cluster>-replication`: the replication user's password, generated at creation.
pub fn replication_secret(cluster: &Cluster) -> Secret {
    let mut metadata = object_meta(
        cluster,
        names::replication_secret(cluster_name(cluster)),
        BTreeMap::new(),
    );
    metadata.annotations = Some(BTreeMap::from([(
        GENERATE_ANNOTATION.to_string(),
        names::REPLICATION_PASSWORD_KEY.to_string(),
    )]));
    Secret {
        metadata,
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// The read-write (primary), read-only (replicas) and any-instance Services.
fn services(cluster: &Cluster) -> [Service; 3] {
    let name = cluster_name(cluster);
    [
        service(cluster, names::service_rw(name), Some("primary")),
        service(cluster, names::service_r(name), Some("replica")),
        service(cluster, names::service_any(name), None),
    ]
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
        metadata: object_meta(
            cluster,
            names::settings_config_map(cluster_name(cluster)),
            BTreeMap::new(),
        ),
        data,
        ..Default::default()
    }
}

/// The data volume claim of instance `instance`, of the policy's `storage`.
pub fn claim(cluster: &Cluster, instance: u32, storage: &Storage) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: object_meta(
            cluster,
            names::instance(cluster_name(cluster), instance),
            BTreeMap::new(),
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: storage.storage_class.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Service selecting the Cluster's pods, optionally of one role.
pub fn service(cluster: &Cluster, service_name: String, role: Option<&str>) -> Service {
    let mut selector = BTreeMap::from([(
        pod::LABEL_CLUSTER.to_string(),
        cluster_name(cluster).to_string(),
    )]);
    if let Some(role) = role {
        selector.insert(pod::LABEL_ROLE.into(), role.into());
    }
    Service {
        metadata: object_meta(cluster, service_name, BTreeMap::new()),
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
    let mut metadata = object_meta(cluster, pod_name, template_meta.labels.unwrap_or_default());
    metadata.annotations = template_meta.annotations;
    if let Some(ns) = template_meta.namespace {
        metadata.namespace = Some(ns);
    }
    // The agent runs as the Cluster's own ServiceAccount (the guardrail refuses another).
    let mut spec = template.spec.clone().unwrap_or_default();
    spec.service_account_name = Some(names::agent(cluster_name(cluster)));
    Pod {
        metadata,
        spec: Some(spec),
        ..Default::default()
    }
}

#[cfg(test)]
mod env_tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use serde_json::json;

    fn cluster(env: serde_json::Value) -> Cluster {
        serde_json::from_value(json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns", "uid": "u"},
            "spec": {"env": env}
        }))
        .unwrap()
    }

    fn pod() -> Pod {
        let container = Container {
            name: pod::CONTAINER.into(),
            env: Some(vec![EnvVar {
                name: "TZ".into(),
                value: Some("Europe/Paris".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        Pod {
            metadata: object_meta(&cluster(json!([])), "pg-1".into(), BTreeMap::new()),
            spec: Some(PodSpec {
                containers: vec![container],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn env(pod: &Pod) -> Vec<(String, String)> {
        let c = &pod.spec.as_ref().unwrap().containers[0];
        (c.env.iter().flatten())
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_cluster_env_reaches_the_container_and_wins_over_the_policy() {
        let mut p = pod();
        let c = cluster(json!([
            {"name": "AWS_REQUEST_CHECKSUM_CALCULATION", "value": "when_required"},
            {"name": "TZ", "value": "UTC"}
        ]));
        with_cluster_env(&c, &mut p).unwrap();
        let pairs = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(
            env(&p),
            vec![
                pairs("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
                pairs("TZ", "UTC")
            ]
        );
    }

    #[test]
    fn a_reserved_name_is_refused_naming_it_not_its_value() {
        let c = cluster(json!([{"name": "AWS_SECRET_ACCESS_KEY", "value": "s3cr3t"}]));
        let e = with_cluster_env(&c, &mut pod()).unwrap_err().to_string();
        assert!(
            e.contains("spec.env must not set AWS_SECRET_ACCESS_KEY"),
            "{e}"
        );
        assert!(!e.contains("s3cr3t"), "{e}");
    }
}
