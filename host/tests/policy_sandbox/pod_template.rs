//! The pod-template guardrail: an allow-list over the SDK's default pod (sdk/README.md, "What
//! a policy may set in an instance pod"). Part of `policy_sandbox`: the policies' own pods go
//! through wasmtime; the refused cases are templates given to the planner directly, one per
//! field the old deny-list let through.

use super::*;
use k8s_openapi::api::core::v1::{
    AzureFileVolumeSource, CSIVolumeSource, Capabilities, CephFSVolumeSource, ConfigMapEnvSource,
    ConfigMapKeySelector, ConfigMapProjection, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, EphemeralVolumeSource, ISCSIVolumeSource, LocalObjectReference,
    PersistentVolumeClaimSpec, PersistentVolumeClaimTemplate, PodSpec, ProjectedVolumeSource,
    RBDVolumeSource, SecurityContext, TypedLocalObjectReference, Volume, VolumeProjection,
};

/// A Cluster with an encrypted, credentialed store and an endpoint CA: every Secret and
/// volume the default pod can have, and what the production policy asks for.
fn store_cluster(name: &str) -> Cluster {
    let mut cluster = cluster(name);
    let yaml = r#"
destinationPath: s3://backups/pg
endpointCA: { name: store-ca, key: ca.crt }
s3Credentials:
  accessKeyId: { name: aws-creds, key: ACCESS_KEY_ID }
  secretAccessKey: { name: aws-creds, key: ACCESS_SECRET_KEY }
wal: { encryption: AES256 }
"#;
    cluster.spec.backup = Some(serde_saphyr::from_str(yaml).unwrap());
    cluster
}

/// The guardrail's verdict on the policy's own answers for `cluster`.
fn planned_by(policy: &str, cluster: &Cluster) -> Result<(), GuardrailError> {
    let policy = engine().load(&module(policy), LIMITS).unwrap();
    let decisions = policy
        .cluster_decisions(cluster, &[], &[])
        .expect("the policy answers");
    let actions = plan::plan_cluster(cluster, &decisions)?;
    plan::guardrails::check(&plan::subject(cluster), &actions)
}

#[test]
fn the_default_and_production_policies_pods_pass_the_guardrail() {
    planned_by("default", &cluster("plain")).unwrap();
    planned_by("default", &store_cluster("with-ca")).unwrap();
    planned_by("production", &store_cluster("prod")).unwrap();
}

type PodEdit = fn(&mut PodSpec);

/// The guardrail's verdict on the SDK's default pod of a Cluster changed by `edit`.
fn verdict(edit: PodEdit) -> String {
    let cluster = store_cluster("guarded");
    let mut pod = pgwarden_sdk::defaults::instance_pod(&cluster, 0)
        .unwrap()
        .build();
    edit(pod.spec.as_mut().unwrap());
    let decisions = ClusterDecisions {
        archive: None,
        pods: vec![pod],
        storage: vec![pgwarden_sdk::defaults::storage(&cluster, None).unwrap()],
    };
    match plan::plan_cluster(&cluster, &decisions) {
        Ok(_) => "planned".into(),
        Err(e) => e.to_string(),
    }
}

/// How many volumes the default pod has: an added one comes after them.
fn default_volumes() -> usize {
    let pod = pgwarden_sdk::defaults::instance_pod(&store_cluster("guarded"), 0).unwrap();
    pod.build().spec.unwrap().volumes.map_or(0, |v| v.len())
}

/// The `postgres` container of a spec.
fn postgres(spec: &mut PodSpec) -> &mut Container {
    spec.containers
        .iter_mut()
        .find(|c| c.name == "postgres")
        .unwrap()
}

fn security(spec: &mut PodSpec) -> &mut SecurityContext {
    postgres(spec)
        .security_context
        .get_or_insert_with(Default::default)
}

fn add_volume(spec: &mut PodSpec, volume: Volume) {
    spec.volumes.get_or_insert_with(Vec::new).push(volume);
}

fn local_secret(name: &str) -> Option<LocalObjectReference> {
    Some(LocalObjectReference { name: name.into() })
}

/// Each field the old deny-list let through, one case each: (what, edit, the refusal's
/// path and reason as the message must say them).
const REFUSED: [(&str, PodEdit, &str); 13] = [
    (
        "capabilities.add",
        |s| {
            security(s).capabilities = Some(Capabilities {
                add: Some(vec!["SYS_ADMIN".into()]),
                drop: Some(vec!["ALL".into()]),
            })
        },
        "spec.containers[0].securityContext.capabilities.add adds capability SYS_ADMIN",
    ),
    (
        "unset allowPrivilegeEscalation",
        |s| security(s).allow_privilege_escalation = None,
        "spec.containers[0].securityContext.allowPrivilegeEscalation must be false",
    ),
    (
        "hostPort",
        |s| {
            postgres(s).ports = Some(vec![ContainerPort {
                container_port: 5432,
                host_port: Some(5432),
                ..Default::default()
            }])
        },
        "spec.containers[0].ports[0].hostPort is not a field a policy may set",
    ),
    (
        "nodeName",
        |s| s.node_name = Some("control-plane".into()),
        "spec.nodeName is not a field a policy may set",
    ),
    (
        "ephemeral dataSource",
        |s| {
            let spec = PersistentVolumeClaimSpec {
                data_source: Some(TypedLocalObjectReference {
                    kind: "PersistentVolumeClaim".into(),
                    name: "other-cluster-1".into(),
                    api_group: None,
                }),
                ..Default::default()
            };
            add_volume(
                s,
                Volume {
                    name: "clone".into(),
                    ephemeral: Some(EphemeralVolumeSource {
                        volume_claim_template: Some(PersistentVolumeClaimTemplate {
                            metadata: None,
                            spec,
                        }),
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].ephemeral.volumeClaimTemplate.spec.dataSource is not a field a policy may set",
    ),
    (
        "csi secret",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "csi".into(),
                    csi: Some(CSIVolumeSource {
                        driver: "secrets-store.csi.k8s.io".into(),
                        node_publish_secret_ref: local_secret("db-admin"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].csi is not a field a policy may set",
    ),
    (
        "azureFile secret",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "azure".into(),
                    azure_file: Some(AzureFileVolumeSource {
                        secret_name: "db-admin".into(),
                        share_name: "share".into(),
                        read_only: None,
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].azureFile is not a field a policy may set",
    ),
    (
        "cephfs secret",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "ceph".into(),
                    cephfs: Some(CephFSVolumeSource {
                        monitors: vec!["10.0.0.1:6789".into()],
                        secret_ref: local_secret("db-admin"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].cephfs is not a field a policy may set",
    ),
    (
        "rbd secret",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "rbd".into(),
                    rbd: Some(RBDVolumeSource {
                        image: "disk".into(),
                        monitors: vec!["10.0.0.1:6789".into()],
                        secret_ref: local_secret("db-admin"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].rbd is not a field a policy may set",
    ),
    (
        "iscsi secret",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "iscsi".into(),
                    iscsi: Some(ISCSIVolumeSource {
                        iqn: "iqn.2001-04.com.example:disk".into(),
                        lun: 0,
                        target_portal: "10.0.0.1:3260".into(),
                        secret_ref: local_secret("db-admin"),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        },
        "spec.volumes[N].iscsi is not a field a policy may set",
    ),
    (
        "configMapKeyRef",
        |s| {
            postgres(s).env.get_or_insert_with(Vec::new).push(EnvVar {
                name: "OTHER".into(),
                value_from: Some(EnvVarSource {
                    config_map_key_ref: Some(ConfigMapKeySelector {
                        name: "other-settings".into(),
                        key: "archive.json".into(),
                        optional: None,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        "it refers to ConfigMap other-settings (spec.containers[0].env[",
    ),
    (
        "envFrom.configMapRef",
        |s| {
            postgres(s).env_from = Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "other-settings".into(),
                    optional: None,
                }),
                ..Default::default()
            }])
        },
        "it refers to ConfigMap other-settings (spec.containers[0].envFrom[0].configMapRef)",
    ),
    (
        "projected configMap",
        |s| {
            add_volume(
                s,
                Volume {
                    name: "all".into(),
                    projected: Some(ProjectedVolumeSource {
                        sources: Some(vec![VolumeProjection {
                            config_map: Some(ConfigMapProjection {
                                name: "other-settings".into(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }]),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )
        },
        "it refers to ConfigMap other-settings (spec.volumes[N].projected.sources[0].configMap)",
    ),
];

/// Every case is tried and the misses listed together, so a run shows each field's fate.
#[test]
fn each_field_off_the_pod_allow_list_is_refused_by_its_path() {
    let mut misses = Vec::new();
    for (what, edit, expected) in REFUSED {
        let verdict = verdict(edit);
        eprintln!("{what}: {verdict}");
        let expected = expected.replace("[N]", &format!("[{}]", default_volumes()));
        let full = format!("refused Pod default/guarded-1: {expected}");
        if !verdict.starts_with(&full) && !verdict.contains(&expected) {
            misses.push(format!("{what}: expected «{expected}», got «{verdict}»"));
        }
    }
    assert!(misses.is_empty(), "{}", misses.join("\n"));
}

#[test]
fn a_policy_may_tighten_the_default_pod_but_not_loosen_it() {
    // Tighter than the default, or on the allow-list: planned.
    assert_eq!(
        verdict(|s| {
            let sc = security(s);
            sc.read_only_root_filesystem = Some(true);
            sc.capabilities.get_or_insert_with(Default::default).add = None;
            s.node_selector = Some([("disk".to_string(), "ssd".to_string())].into());
            postgres(s).image = Some("postgres:17".into());
        }),
        "planned"
    );
    // Looser or other: the privileged flag and a user other than the default's (root, kept
    // explicit so the agent can keep its token from `postgres`) are refused by their paths.
    let privileged = verdict(|s| security(s).privileged = Some(true));
    assert!(
        privileged.contains("spec.containers[0].securityContext.privileged asks for privileges"),
        "{privileged}"
    );
    let other_user = verdict(|s| security(s).run_as_user = Some(1000));
    assert!(
        other_user.contains("spec.containers[0].securityContext.runAsUser"),
        "{other_user}"
    );
}
