//! The default pod's contents (its securityContext and token are tested in `pod.rs`).

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec, PodTemplateSpec};
use pgwarden_crds::settings::{SETTINGS_MOUNT_PATH, env, pod};
use serde_json::json;

use super::{backed_up, cluster};
use crate::defaults::{DEFAULT_IMAGE, instance_pod};
use crate::names;

fn spec(template: &PodTemplateSpec) -> &PodSpec {
    template.spec.as_ref().unwrap()
}

fn postgres(template: &PodTemplateSpec) -> &Container {
    &spec(template).containers[0]
}

fn env_var<'a>(template: &'a PodTemplateSpec, name: &str) -> Option<&'a EnvVar> {
    postgres(template)
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
}

fn label(template: &PodTemplateSpec, key: &str) -> Option<String> {
    let labels = template.metadata.as_ref()?.labels.as_ref()?;
    labels.get(key).cloned()
}

#[test]
fn instance_zero_is_the_primary_and_the_others_replicas() {
    let c = cluster(json!({ "instances": 3 }));
    let first = instance_pod(&c, 0).unwrap().build();
    let third = instance_pod(&c, 2).unwrap().build();
    assert_eq!(label(&first, pod::LABEL_ROLE).as_deref(), Some("primary"));
    assert_eq!(label(&third, pod::LABEL_ROLE).as_deref(), Some("replica"));
    let second = instance_pod(&c, 1).unwrap().build();
    assert_eq!(label(&second, pod::LABEL_ROLE).as_deref(), Some("replica"));
    assert_eq!(label(&third, pod::LABEL_CLUSTER).as_deref(), Some("pg"));
}

#[test]
fn an_instance_past_the_clusters_count_is_denied() {
    let denied = instance_pod(&cluster(json!({ "instances": 2 })), 2)
        .unwrap_err()
        .message;
    assert!(denied.contains("Cluster pg has 2 instance(s)"), "{denied}");
    assert!(denied.contains("no instance number 2"), "{denied}");
}

#[test]
fn the_container_runs_the_agent_in_the_clusters_image_with_its_resources() {
    let default = instance_pod(&cluster(json!({ "instances": 1 })), 0)
        .unwrap()
        .build();
    let c = postgres(&default);
    assert_eq!(c.name, pod::CONTAINER);
    assert_eq!(c.image.as_deref(), Some(DEFAULT_IMAGE));
    assert_eq!(
        c.command.as_deref(),
        Some(&["pgwarden".to_string(), "instance".into(), "run".into()][..])
    );
    assert_eq!(c.ports.as_ref().unwrap()[0].container_port, pod::PORT);
    let probe = c.readiness_probe.as_ref().unwrap();
    let probe_command = probe.exec.as_ref().and_then(|e| e.command.clone());
    assert_eq!(probe_command.unwrap()[2], "ready");
    // Liveness is the agent's own loop, not PostgreSQL's answer (a hung agent is killed).
    let live = c.liveness_probe.as_ref().unwrap();
    let live_command = live.exec.as_ref().and_then(|e| e.command.clone());
    assert_eq!(
        live_command.as_deref(),
        Some(&["pgwarden".to_string(), "instance".into(), "alive".into()][..])
    );
    assert_eq!(
        (
            live.period_seconds,
            live.failure_threshold,
            live.timeout_seconds
        ),
        (Some(10), Some(3), Some(5))
    );
    assert_eq!(c.resources, None);

    let custom = cluster(json!({
        "instances": 1, "imageName": "registry/pg:17",
        "resources": { "requests": { "memory": "2Gi" } },
    }));
    let custom = instance_pod(&custom, 0).unwrap().build();
    let c = postgres(&custom);
    assert_eq!(c.image.as_deref(), Some("registry/pg:17"));
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    assert_eq!(requests.unwrap()["memory"].0, "2Gi");
}

#[test]
fn credentials_reach_the_pod_as_secret_references_only() {
    let template = instance_pod(&backed_up(json!({})), 0).unwrap().build();
    let from = |name| {
        let var = env_var(&template, name)?;
        assert_eq!(var.value, None, "{name} carries no value");
        let secret = var.value_from.as_ref()?.secret_key_ref.as_ref()?;
        Some((secret.name.clone(), secret.key.clone()))
    };
    assert_eq!(
        from(env::ACCESS_KEY_ID),
        Some(("creds".into(), "id".into()))
    );
    assert_eq!(
        from(env::SECRET_ACCESS_KEY),
        Some(("creds".into(), "secret".into()))
    );
    assert_eq!(
        env_var(&template, env::SESSION_TOKEN),
        None,
        "unset: absent"
    );
    assert_eq!(env_var(&template, env::REGION), None);
    let plain = |name| env_var(&template, name).and_then(|v| v.value.clone());
    assert_eq!(plain(pod::ENV_CLUSTER).as_deref(), Some("pg"));
    assert_eq!(plain(pod::ENV_PGDATA).as_deref(), Some(pod::PGDATA));
    assert_eq!(
        plain(pod::ENV_SETTINGS_DIR).as_deref(),
        Some(SETTINGS_MOUNT_PATH)
    );
    let pod_name = env_var(&template, pod::ENV_POD_NAME).unwrap();
    let field = pod_name
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "metadata.name");
}

#[test]
fn each_instance_mounts_its_own_claim_and_the_clusters_settings() {
    let template = instance_pod(&cluster(json!({ "instances": 2 })), 1)
        .unwrap()
        .build();
    let volumes = spec(&template).volumes.as_ref().unwrap();
    let data = volumes
        .iter()
        .find(|v| v.name == names::DATA_VOLUME)
        .unwrap();
    let claim = data.persistent_volume_claim.as_ref().unwrap();
    assert_eq!(claim.claim_name, "pg-2");
    let settings = volumes
        .iter()
        .find(|v| v.name == names::SETTINGS_VOLUME)
        .unwrap();
    assert_eq!(settings.config_map.as_ref().unwrap().name, "pg-settings");
    assert!(
        volumes.iter().all(|v| v.name != names::CA_VOLUME),
        "no CA unless asked"
    );
    let mounts = postgres(&template).volume_mounts.as_ref().unwrap();
    let path_of = |name| {
        mounts
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.mount_path.clone())
    };
    assert_eq!(
        path_of(names::DATA_VOLUME).as_deref(),
        Some(pod::DATA_MOUNT)
    );
    assert_eq!(
        path_of(names::SETTINGS_VOLUME).as_deref(),
        Some(SETTINGS_MOUNT_PATH)
    );
}

#[test]
fn an_endpoint_ca_is_mounted_from_its_secret_under_a_fixed_name() {
    let c = backed_up(json!({ "endpointCA": { "name": "ca-secret", "key": "bundle.pem" } }));
    let template = instance_pod(&c, 0).unwrap().build();
    let volumes = spec(&template).volumes.as_ref().unwrap();
    let ca = volumes.iter().find(|v| v.name == names::CA_VOLUME).unwrap();
    let secret = ca.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("ca-secret"));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str()),
        ("bundle.pem", names::CA_FILE)
    );
    let mounts = postgres(&template).volume_mounts.as_ref().unwrap();
    let mount = mounts.iter().find(|m| m.name == names::CA_VOLUME).unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (names::CA_MOUNT_PATH, Some(true))
    );
}

#[test]
fn the_builder_adds_missing_requests_and_replaces_env_and_labels() {
    let c = cluster(json!({
        "instances": 1, "resources": { "requests": { "memory": "4Gi" } },
    }));
    let template = instance_pod(&c, 0)
        .unwrap()
        .default_requests(&[("cpu", "500m"), ("memory", "1Gi")])
        .env(pod::ENV_CLUSTER, "renamed")
        .label("team", "db")
        .build();
    let requests = postgres(&template)
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap();
    assert_eq!(
        requests["memory"].0, "4Gi",
        "the Cluster's own request wins"
    );
    assert_eq!(requests["cpu"].0, "500m");
    let cluster_vars: Vec<_> = postgres(&template)
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == pod::ENV_CLUSTER)
        .collect();
    assert_eq!(cluster_vars.len(), 1, "replaced, not added twice");
    assert_eq!(cluster_vars[0].value.as_deref(), Some("renamed"));
    assert_eq!(label(&template, "team").as_deref(), Some("db"));
    assert_eq!(
        label(&template, pod::LABEL_ROLE).as_deref(),
        Some("primary")
    );
}
