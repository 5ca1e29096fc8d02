//! The default pod template of an instance, and a builder to adjust it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgwarden_crds::settings::{SETTINGS_MOUNT_PATH, env, pod};
use pgwarden_crds::{Cluster, SecretKeySelector as Selector};

use super::cluster_name;
use crate::names;

/// The image of instance pods when the Cluster sets no `spec.imageName` (the seed's).
pub const DEFAULT_IMAGE: &str = "2ndquadrant/postgresql:latest";

/// A pod template under construction. [`instance_pod`] fills it with the defaults; policies
/// adjust it with the methods below or through [`PodBuilder::template`], then [`build`].
///
/// [`build`]: PodBuilder::build
#[derive(Clone, Debug)]
pub struct PodBuilder {
    /// The template as built so far.
    pub template: PodTemplateSpec,
}

/// The default pod template of instance `instance` of `cluster`: one container `postgres`
/// running `pgwarden instance run`, store credentials from the Secrets the Cluster names
/// (`env.valueFrom.secretKeyRef`), the data volume claim, the settings ConfigMap.
pub fn instance_pod(cluster: &Cluster, instance: u32) -> Result<PodBuilder, String> {
    let name = cluster_name(cluster);
    if instance >= cluster.spec.instances.max(0) as u32 {
        return Err(format!(
            "Cluster {name} has {} instance(s): there is no instance number {instance}",
            cluster.spec.instances
        ));
    }
    let role = if instance == 0 { "primary" } else { "replica" };
    let container = Container {
        name: pod::CONTAINER.into(),
        image: Some(
            cluster
                .spec
                .image_name
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.into()),
        ),
        command: Some(vec!["pgwarden".into(), "instance".into(), "run".into()]),
        env: Some(instance_env(cluster)),
        ports: Some(vec![ContainerPort {
            name: Some("postgresql".into()),
            container_port: pod::PORT,
            ..Default::default()
        }]),
        volume_mounts: Some(mounts(cluster)),
        resources: cluster.spec.resources.clone(),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                // Out of recovery, not only answering: a restoring instance is not Ready
                // until it has replayed the last WAL file and been promoted.
                command: Some(vec!["pgwarden".into(), "instance".into(), "ready".into()]),
            }),
            period_seconds: Some(5),
            // A probe runs psql: on a busy node one second is too short.
            timeout_seconds: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    };
    let labels = BTreeMap::from([
        (pod::LABEL_CLUSTER.to_string(), name.to_string()),
        (pod::LABEL_ROLE.to_string(), role.to_string()),
    ]);
    Ok(PodBuilder {
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![container],
                volumes: Some(volumes(cluster, instance)),
                ..Default::default()
            }),
        },
    })
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An environment variable read from a Secret key: the pod gets the value, the policy and
/// the operator only ever see the Secret's name.
pub fn secret_env(name: &str, selector: &Selector) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: selector.name.clone(),
                key: selector.key.clone(),
                optional: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn instance_env(cluster: &Cluster) -> Vec<EnvVar> {
    let mut env = vec![
        value(pod::ENV_CLUSTER, cluster_name(cluster)),
        field(pod::ENV_POD_NAME, "metadata.name"),
        field(pod::ENV_NAMESPACE, "metadata.namespace"),
        value(pod::ENV_PGDATA, pod::PGDATA),
        value(pod::ENV_SETTINGS_DIR, SETTINGS_MOUNT_PATH),
    ];
    let creds = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.s3_credentials.as_ref());
    if let Some(creds) = creds {
        let pairs = [
            (env::ACCESS_KEY_ID, &creds.access_key_id),
            (env::SECRET_ACCESS_KEY, &creds.secret_access_key),
            (env::SESSION_TOKEN, &creds.session_token),
            (env::REGION, &creds.region),
        ];
        env.extend(
            pairs
                .into_iter()
                .filter_map(|(n, s)| s.as_ref().map(|s| secret_env(n, s))),
        );
    }
    env
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn mounts(cluster: &Cluster) -> Vec<VolumeMount> {
    let mut mounts = vec![
        mount(names::DATA_VOLUME, pod::DATA_MOUNT, false),
        mount(names::SETTINGS_VOLUME, SETTINGS_MOUNT_PATH, true),
    ];
    if endpoint_ca(cluster).is_some() {
        mounts.push(mount(names::CA_VOLUME, names::CA_MOUNT_PATH, true));
    }
    mounts
}

fn endpoint_ca(cluster: &Cluster) -> Option<&Selector> {
    cluster.spec.backup.as_ref()?.endpoint_ca.as_ref()
}

fn volumes(cluster: &Cluster, instance: u32) -> Vec<Volume> {
    let name = cluster_name(cluster);
    let mut volumes = vec![
        Volume {
            name: names::DATA_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names::instance(name, instance),
                read_only: None,
            }),
            ..Default::default()
        },
        Volume {
            name: names::SETTINGS_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::settings_config_map(name),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if let Some(ca) = endpoint_ca(cluster) {
        volumes.push(Volume {
            name: names::CA_VOLUME.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(ca.name.clone()),
                items: Some(vec![KeyToPath {
                    key: ca.key.clone(),
                    path: names::CA_FILE.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    volumes
}

impl PodBuilder {
    /// The `postgres` container.
    pub fn postgres(&mut self) -> &mut Container {
        let spec = self.template.spec.get_or_insert_with(Default::default);
        if !spec.containers.iter().any(|c| c.name == pod::CONTAINER) {
            spec.containers.push(Container {
                name: pod::CONTAINER.into(),
                ..Default::default()
            });
        }
        spec.containers
            .iter_mut()
            .find(|c| c.name == pod::CONTAINER)
            .expect("inserted above")
    }

    /// Sets resource requests that the Cluster leaves unset (`cpu`, `memory`...).
    pub fn default_requests(mut self, requests: &[(&str, &str)]) -> Self {
        let resources = self
            .postgres()
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        let current = resources.requests.get_or_insert_with(BTreeMap::new);
        for (name, quantity) in requests {
            current
                .entry((*name).to_string())
                .or_insert_with(|| Quantity((*quantity).to_string()));
        }
        self
    }

    /// Adds (or replaces) a plain environment variable of the `postgres` container.
    pub fn env(mut self, name: &str, val: &str) -> Self {
        let env = self.postgres().env.get_or_insert_with(Vec::new);
        env.retain(|e| e.name != name);
        env.push(value(name, val));
        self
    }

    /// Adds a label to the pod.
    pub fn label(mut self, key: &str, val: &str) -> Self {
        let meta = self.template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), val.into());
        self
    }

    /// The finished template.
    pub fn build(self) -> PodTemplateSpec {
        self.template
    }
}
