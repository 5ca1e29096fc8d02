//! A Cluster's objects from the policy's decisions: a Pod and a PersistentVolumeClaim per
//! instance, three Services, the settings ConfigMap; all owned by the Cluster.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, Pod, PodTemplateSpec, Service,
    ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::{ARCHIVE_SETTINGS_KEY, ArchiveSettings, env, pod};
use pgwarden_sdk::names;
use serde::Serialize;

use super::actions::{Action, ObjectRef};
use super::errors::GuardrailError;
use super::guardrails::Subject;
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
        let count = cluster.spec.instances.max(0) as u32;
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
/// template that reaches outside the Cluster (see [`check_template`]).
pub fn plan_cluster(
    cluster: &Cluster,
    decisions: &ClusterDecisions,
) -> Result<Vec<Action>, GuardrailError> {
    let cluster_name = name(cluster);
    let mut actions = vec![apply(&settings_config_map(
        cluster,
        decisions.archive.as_ref(),
    ))];
    for (i, template) in decisions.pods.iter().enumerate() {
        let pod = instance_pod(cluster, i as u32, template)?;
        actions.push(apply(&claim(cluster, i as u32)));
        actions.push(apply(&pod));
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

/// `<cluster>-settings` with `archive.json` (absent when archiving is off).
pub fn settings_config_map(cluster: &Cluster, archive: Option<&ArchiveSettings>) -> ConfigMap {
    let data = archive.map(|a| {
        BTreeMap::from([(
            ARCHIVE_SETTINGS_KEY.to_string(),
            serde_json::to_string_pretty(a).unwrap_or_default(),
        )])
    });
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

/// The Pod of instance `instance` from the policy's template: name, owner and cluster label
/// set by the host; the namespace is the template's if it has one (the guardrails refuse a
/// foreign one), else the Cluster's.
pub fn instance_pod(
    cluster: &Cluster,
    instance: u32,
    template: &PodTemplateSpec,
) -> Result<Pod, GuardrailError> {
    let pod_name = names::instance(name(cluster), instance);
    check_template(cluster, &pod_name, template)?;
    let template_meta = template.metadata.clone().unwrap_or_default();
    let mut metadata = meta(cluster, pod_name, template_meta.labels.unwrap_or_default());
    metadata.annotations = template_meta.annotations;
    if let Some(ns) = template_meta.namespace {
        metadata.namespace = Some(ns);
    }
    Ok(Pod {
        metadata,
        spec: template.spec.clone(),
        ..Default::default()
    })
}

/// The secrets the Cluster's spec names: the only ones its pods may read.
fn cluster_secrets(cluster: &Cluster) -> BTreeSet<String> {
    let Some(store) = cluster.spec.backup.as_ref() else {
        return BTreeSet::new();
    };
    let creds = store.s3_credentials.as_ref();
    let selectors = [
        creds.and_then(|c| c.access_key_id.as_ref()),
        creds.and_then(|c| c.secret_access_key.as_ref()),
        creds.and_then(|c| c.session_token.as_ref()),
        creds.and_then(|c| c.region.as_ref()),
        store.endpoint_ca.as_ref(),
    ];
    selectors
        .into_iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect()
}

/// Refuses a template without the `postgres` container, with a credential by value, or
/// referring to a claim, ConfigMap or Secret that is not the Cluster's.
pub fn check_template(
    cluster: &Cluster,
    pod_name: &str,
    template: &PodTemplateSpec,
) -> Result<(), GuardrailError> {
    let object = format!(
        "Pod {}/{pod_name}",
        cluster.metadata.namespace.as_deref().unwrap_or_default()
    );
    let foreign = |reference: String| GuardrailError::ForeignReference {
        object: object.clone(),
        reference,
        subject: format!("Cluster {}", name(cluster)),
    };
    let spec = template.spec.clone().unwrap_or_default();
    if !spec.containers.iter().any(|c| c.name == pod::CONTAINER) {
        return Err(GuardrailError::Invalid {
            object,
            detail: format!("the pod template has no container named {}", pod::CONTAINER),
        });
    }
    let credentials = [
        env::ACCESS_KEY_ID,
        env::SECRET_ACCESS_KEY,
        env::SESSION_TOKEN,
        env::REGION,
    ];
    let secrets = cluster_secrets(cluster);
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for var in containers.flat_map(|c| c.env.iter().flatten()) {
        if credentials.contains(&var.name.as_str()) && var.value.is_some() {
            return Err(GuardrailError::SecretValue {
                object: object.clone(),
                env: var.name.clone(),
            });
        }
        let secret = var
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref());
        if let Some(secret) = secret.filter(|s| !secrets.contains(&s.name)) {
            return Err(foreign(format!("Secret {}", secret.name)));
        }
    }
    let own_claim = names::instance(name(cluster), pod_name_index(cluster, pod_name));
    let own_config = names::settings_config_map(name(cluster));
    for volume in spec.volumes.iter().flatten() {
        if let Some(claim) = volume
            .persistent_volume_claim
            .as_ref()
            .filter(|c| c.claim_name != own_claim)
        {
            return Err(foreign(format!(
                "PersistentVolumeClaim {}",
                claim.claim_name
            )));
        }
        if let Some(config) = volume.config_map.as_ref().filter(|c| c.name != own_config) {
            return Err(foreign(format!("ConfigMap {}", config.name)));
        }
        let secret = volume.secret.as_ref().and_then(|s| s.secret_name.clone());
        if let Some(secret) = secret.filter(|s| !secrets.contains(s)) {
            return Err(foreign(format!("Secret {secret}")));
        }
    }
    Ok(())
}

fn pod_name_index(cluster: &Cluster, pod_name: &str) -> u32 {
    let number = pod_name
        .strip_prefix(name(cluster))
        .and_then(|s| s.strip_prefix('-'))
        .and_then(|n| n.parse::<u32>().ok());
    number.unwrap_or(1).saturating_sub(1)
}
