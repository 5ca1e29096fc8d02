//! The default pod template of an instance, and a builder to adjust it.

use crate::policy::Decided;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    DownwardAPIProjection, DownwardAPIVolumeFile, EnvVar, EnvVarSource, ExecAction, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecretVolumeSource, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgwarden_crds::settings::{SETTINGS_MOUNT_PATH, pod};
use pgwarden_crds::{Cluster, SecretKeySelector as Selector};

use super::cluster_name;
use crate::names;

/// Env: where the agent finds the replication Secret's files.
pub const ENV_REPLICATION_DIR: &str = "PGWARDEN_REPLICATION_DIR";

/// The image of instance pods when the Cluster sets no `spec.imageName`: the instance image
/// `cargo xtask image` builds (PostgreSQL 15, the pinned barman cloud tools, this version's
/// `pgwarden`), tagged with the version. The seed's `2ndquadrant/postgresql` holds neither
/// `pgwarden` nor those tools.
pub const DEFAULT_IMAGE: &str = concat!("pgwarden-instance:", env!("CARGO_PKG_VERSION"));

/// Where the agent's service-account token (with the API server's CA and the namespace) is
/// mounted: the path in-cluster configuration reads.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The volume of the token, projected explicitly (not by admission, whose files are 0644).
pub const TOKEN_VOLUME: &str = "agent-token";
/// Mode of the token files: the agent runs as root, PostgreSQL as `postgres`; 0400 owned by
/// root keeps the token from the database's OS user (a superuser's `pg_read_file`, `COPY
/// FROM PROGRAM`). No `fsGroup` either: it would hand the files to a group.
pub const TOKEN_MODE: i32 = 0o400;
/// Capabilities the agent keeps (all others dropped). It runs as root only to keep the token
/// from the database's OS user and runs PostgreSQL and barman as `postgres`: SETUID, SETGID
/// to become that user (setgroups too), CHOWN to give it PGDATA and the files the agent
/// writes there, DAC_OVERRIDE to write inside PGDATA (0700, `postgres`'s) as root, FOWNER to
/// chmod a folder it gave `postgres` (a restore's PGDATA). Measured with `setpriv
/// --bounding-set`: `instance run` (initdb, start, answer) fails without any one of the
/// first four; FOWNER is the restore's `chmod 0700` after its chown.
pub const AGENT_CAPABILITIES: [&str; 5] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"];

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
pub fn instance_pod(cluster: &Cluster, instance: u32) -> Decided<PodBuilder> {
    let name = cluster_name(cluster);
    if instance >= cluster.spec.instances.max(0) as u32 {
        return Err(format!(
            "Cluster {name} has {} instance(s): there is no instance number {instance}",
            cluster.spec.instances
        )
        .into());
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
        security_context: Some(container_security()),
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
        liveness_probe: Some(liveness_probe()),
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
                // The token only where the agent reads it: the explicit volume above.
                automount_service_account_token: Some(false),
                security_context: Some(PodSecurityContext {
                    seccomp_profile: Some(runtime_default()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        },
    })
}

/// The agent's own answer (`pgwarden instance alive`): it fails once the agent's main loop
/// has not turned for 30 s, not only when the process is gone. A hung agent stops reporting,
/// a standby is promoted, and the PostgreSQL it supervises would keep taking writes from
/// clients connected to it; killed, the container starts again and the agent rejoins as a
/// standby. Three failures 10 s apart: killed 50 to 60 s after its last beat, after the
/// default failover (30 s); a slow turn of the loop on a busy node is not a hang.
fn liveness_probe() -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["pgwarden".into(), "instance".into(), "alive".into()]),
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    }
}

/// The `postgres` container's: no privilege escalation, every capability dropped but
/// [`AGENT_CAPABILITIES`]. The agent is root (not `runAsNonRoot`) on purpose: the token it
/// reads is then kept from the `postgres` user PostgreSQL runs as. Said explicitly
/// (`runAsUser: 0`): the instance image's own user is `postgres` (999), so without it a
/// kubelet would start the agent as 999, unable to read its token or the replication Secret.
fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        run_as_user: Some(0),
        run_as_group: Some(0),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: Some(AGENT_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        }),
        seccomp_profile: Some(runtime_default()),
        ..Default::default()
    }
}

/// The service-account token, the API server's CA and the namespace, as admission would
/// project them but readable by root only ([`TOKEN_MODE`]).
fn token_volume() -> Volume {
    let token = VolumeProjection {
        service_account_token: Some(ServiceAccountTokenProjection {
            path: "token".into(),
            expiration_seconds: Some(3607),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ca = VolumeProjection {
        config_map: Some(ConfigMapProjection {
            name: "kube-root-ca.crt".into(),
            items: Some(vec![KeyToPath {
                key: "ca.crt".into(),
                path: "ca.crt".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let namespace = VolumeProjection {
        downward_api: Some(DownwardAPIProjection {
            items: Some(vec![DownwardAPIVolumeFile {
                path: "namespace".into(),
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.namespace".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    };
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(TOKEN_MODE),
            sources: Some(vec![token, ca, namespace]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The replication password as a file (never env: `/proc/<pid>/environ` and `kubectl describe`
/// show env), readable by root only like the token ([`TOKEN_MODE`]).
fn replication_volume(cluster: &str) -> Volume {
    Volume {
        name: names::REPLICATION_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(names::replication_secret(cluster)),
            default_mode: Some(TOKEN_MODE),
            ..Default::default()
        }),
        ..Default::default()
    }
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
        // A path, not the password: the agent reads the file.
        value(ENV_REPLICATION_DIR, names::REPLICATION_MOUNT_PATH),
    ];
    let creds = cluster
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.s3_credentials.as_ref());
    if let Some(creds) = creds {
        env.extend(creds.selectors().map(|k| secret_env(k.env, k.selector)));
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
        mount(TOKEN_VOLUME, TOKEN_MOUNT_PATH, true),
        mount(
            names::REPLICATION_VOLUME,
            names::REPLICATION_MOUNT_PATH,
            true,
        ),
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
        token_volume(),
        replication_volume(name),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
            "metadata": {"name": "pg", "namespace": "ns"},
            "spec": {"instances": 1}
        }))
        .unwrap()
    }

    #[test]
    fn the_default_pod_runs_with_the_least_it_needs_and_a_token_only_root_reads() {
        let template = instance_pod(&cluster(), 0).unwrap().build();
        let spec = template.spec.unwrap();
        assert_eq!(spec.automount_service_account_token, Some(false));
        let pod_seccomp = spec
            .security_context
            .clone()
            .and_then(|s| s.seccomp_profile);
        assert_eq!(pod_seccomp.map(|s| s.type_), Some("RuntimeDefault".into()));
        let c = &spec.containers[0];
        let sc = c.security_context.clone().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        assert_eq!(
            caps.add,
            Some(
                ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(
            sc.run_as_non_root, None,
            "the agent is root to keep the token from postgres"
        );
        let mounted = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == TOKEN_MOUNT_PATH);
        assert_eq!(
            mounted.map(|m| (m.name.as_str(), m.read_only)),
            Some((TOKEN_VOLUME, Some(true)))
        );
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == TOKEN_VOLUME)
            .unwrap();
        let projected = volume.projected.as_ref().unwrap();
        assert_eq!(projected.default_mode, Some(0o400));
        let sources = projected.sources.iter().flatten();
        let paths: Vec<String> = sources
            .flat_map(|s| {
                let token = s.service_account_token.iter().map(|t| t.path.clone());
                let ca = s
                    .config_map
                    .iter()
                    .flat_map(|c| c.items.iter().flatten().map(|i| i.path.clone()));
                let ns = s
                    .downward_api
                    .iter()
                    .flat_map(|d| d.items.iter().flatten().map(|i| i.path.clone()));
                token.chain(ca).chain(ns).collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(paths, ["token", "ca.crt", "namespace"]);
        assert_eq!(
            spec.security_context.as_ref().and_then(|s| s.fs_group),
            None
        );
    }
}
