//! The instance pod template a policy returns: it must stay within its Cluster (its own
//! claim, settings ConfigMap, Secrets and ServiceAccount) and ask for no privileges.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::{env, pod};
use pgwarden_sdk::names;

use crate::plan::errors::GuardrailError;

fn cluster_name(cluster: &Cluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
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
/// referring to a claim, ConfigMap or Secret that is not the Cluster's, or one of `extra` (a
/// restore source's Secrets).
pub fn check_pod_template(
    cluster: &Cluster,
    pod_name: &str,
    template: &PodTemplateSpec,
    extra: &BTreeSet<String>,
) -> Result<(), GuardrailError> {
    let object = format!(
        "Pod {}/{pod_name}",
        cluster.metadata.namespace.as_deref().unwrap_or_default()
    );
    let foreign = |reference: String| GuardrailError::ForeignReference {
        object: object.clone(),
        reference,
        subject: format!("Cluster {}", cluster_name(cluster)),
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
    let mut secrets = cluster_secrets(cluster);
    secrets.extend(extra.iter().cloned());
    let containers: Vec<_> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .collect();
    for container in &containers {
        let privileged = container.security_context.as_ref().is_some_and(|c| {
            c.privileged == Some(true) || c.allow_privilege_escalation == Some(true)
        });
        if privileged {
            return Err(GuardrailError::Invalid {
                object,
                detail: format!(
                    "container {} asks for privileges (privileged or allowPrivilegeEscalation); instance pods run without",
                    container.name
                ),
            });
        }
        let foreign_env_from = container
            .env_from
            .iter()
            .flatten()
            .filter_map(|e| e.secret_ref.as_ref())
            .find(|s| !secrets.contains(&s.name));
        if let Some(secret) = foreign_env_from {
            return Err(foreign(format!("Secret {}", secret.name)));
        }
    }
    let agent = names::agent(cluster_name(cluster));
    let account = spec
        .service_account_name
        .as_ref()
        .or(spec.service_account.as_ref());
    if let Some(account) = account.filter(|a| **a != agent) {
        return Err(foreign(format!("ServiceAccount {account}")));
    }
    if spec.host_network == Some(true) || spec.host_pid == Some(true) || spec.host_ipc == Some(true)
    {
        return Err(GuardrailError::Invalid {
            object,
            detail: "it shares the node's network, process or IPC namespace (hostNetwork, hostPID, hostIPC)".into(),
        });
    }
    for var in containers.iter().flat_map(|c| c.env.iter().flatten()) {
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
    let own_claim = names::instance(cluster_name(cluster), pod_name_index(cluster, pod_name));
    let own_config = names::settings_config_map(cluster_name(cluster));
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
        if let Some(host) = &volume.host_path {
            return Err(GuardrailError::Invalid {
                object,
                detail: format!(
                    "volume {} mounts the node's path {} (hostPath); instance pods keep to their own volumes",
                    volume.name, host.path
                ),
            });
        }
        let projected = volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .filter_map(|s| s.secret.as_ref().map(|s| s.name.clone()));
        let secret = volume.secret.as_ref().and_then(|s| s.secret_name.clone());
        if let Some(secret) = secret
            .into_iter()
            .chain(projected)
            .find(|s| !secrets.contains(s))
        {
            return Err(foreign(format!("Secret {secret}")));
        }
    }
    Ok(())
}

fn pod_name_index(cluster: &Cluster, pod_name: &str) -> u32 {
    let number = pod_name
        .strip_prefix(cluster_name(cluster))
        .and_then(|s| s.strip_prefix('-'))
        .and_then(|n| n.parse::<u32>().ok());
    number.unwrap_or(1).saturating_sub(1)
}
