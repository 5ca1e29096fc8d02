//! Pure checks of observed objects: credentials that must exist, and what the instance pods
//! say about the Cluster.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Secret};
use pgwarden_crds::{Backup, BackupPhase, Cluster, SecretKeySelector};

use super::rollout::{PodState, RunningBackup};

/// A reference the operator cannot resolve, with the field that made it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MissingSecret {
    /// e.g. `spec.backup.s3Credentials.accessKeyId`.
    pub field: String,
    pub selector: SecretKeySelector,
    /// Whether the Secret exists (then only the key is missing).
    pub secret_exists: bool,
}

impl MissingSecret {
    /// A message that names the object, the field and the fix.
    pub fn message(&self, namespace: &str) -> String {
        let SecretKeySelector { name, key } = &self.selector;
        if self.secret_exists {
            format!(
                "Secret {namespace}/{name} has no key {key} (referenced by {}): add it, e.g. kubectl create secret generic {name} --from-literal={key}=... --dry-run=client -o yaml | kubectl apply -f -",
                self.field
            )
        } else {
            format!(
                "Secret {namespace}/{name} not found (referenced by {}): create it, e.g. kubectl create secret generic {name} --from-literal={key}=...",
                self.field
            )
        }
    }
}

/// Every Secret key the Cluster's backup needs, with the field naming it.
pub fn secret_references(cluster: &Cluster) -> Vec<(String, SecretKeySelector)> {
    let Some(backup) = &cluster.spec.backup else {
        return Vec::new();
    };
    let mut refs = Vec::new();
    if let Some(creds) = &backup.s3_credentials {
        for k in creds.selectors() {
            let field = k.field;
            refs.push((
                format!("spec.backup.s3Credentials.{field}"),
                k.selector.clone(),
            ));
        }
    }
    if let Some(ca) = &backup.endpoint_ca {
        refs.push(("spec.backup.endpointCA".into(), ca.clone()));
    }
    refs
}

/// The names of a Secret's keys: all the operator keeps of it (never a value).
pub fn secret_keys(secret: &Secret) -> BTreeSet<String> {
    let data = secret.data.iter().flat_map(|d| d.keys());
    let string_data = secret.string_data.iter().flat_map(|d| d.keys());
    data.chain(string_data).cloned().collect()
}

/// The references that do not resolve, given the key names of each Secret by name (`None`:
/// no such Secret).
pub fn missing_secrets(
    cluster: &Cluster,
    keys: impl Fn(&str) -> Option<BTreeSet<String>>,
) -> Vec<MissingSecret> {
    secret_references(cluster)
        .into_iter()
        .filter_map(|(field, selector)| {
            let keys = keys(&selector.name);
            let has_key = keys.as_ref().is_some_and(|k| k.contains(&selector.key));
            (!has_key).then(|| MissingSecret {
                field,
                selector,
                secret_exists: keys.is_some(),
            })
        })
        .collect()
}

/// What the instance pods say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Instances {
    pub total: i32,
    pub ready: i32,
    /// The pod named as the primary, when it exists (ready or not: `ready` counts that).
    pub primary: Option<String>,
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Where a live instance pod is, for the rollout.
pub fn pod_state(pod: &Pod) -> PodState {
    if pod.metadata.deletion_timestamp.is_some() {
        PodState::Terminating
    } else if is_ready(pod) {
        PodState::Ready
    } else {
        PodState::NotReady
    }
}

/// The Backups of `cluster` that run or are about to run, with their pod (the one the
/// operator recorded, else the one the policy targeted): every Backup not yet ended that has a
/// pod. A pending one counts too: its agent may have started barman before this cache sees
/// the phase `running`.
pub fn running_backups<B: std::ops::Deref<Target = Backup>>(
    backups: &[B],
    cluster: &Cluster,
) -> Vec<RunningBackup> {
    backups
        .iter()
        .filter(|b| {
            b.metadata.namespace == cluster.metadata.namespace
                && Some(&b.spec.cluster.name) == cluster.metadata.name.as_ref()
        })
        .filter_map(|b| {
            let status = b.status.as_ref()?;
            let pod = status
                .instance_id
                .as_ref()
                .and_then(|i| i.pod_name.clone())
                .or_else(|| status.settings.as_ref().map(|s| s.target_pod.clone()))?;
            let ended = status.phase.is_some_and(|p| p.is_final());
            (!ended).then(|| RunningBackup {
                name: b.metadata.name.clone().unwrap_or_default(),
                pod,
                started: status.phase == Some(BackupPhase::Running),
            })
        })
        .collect()
}

/// Summarises the instance pods of a Cluster (already filtered by its label).
pub fn instances<P: std::ops::Deref<Target = Pod>>(pods: &[P], primary_name: &str) -> Instances {
    let ready = pods.iter().filter(|p| is_ready(p)).count() as i32;
    let primary = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(primary_name))
        .map(|_| primary_name.to_string());
    Instances {
        total: pods.len() as i32,
        ready,
        primary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cluster(yaml: &str) -> Cluster {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const SEED: &str = r#"
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata: {name: postgresql-bkp, namespace: default}
spec:
  backup:
    destinationPath: s3://bucket/path
    s3Credentials:
      accessKeyId: {name: aws-creds, key: ACCESS_KEY_ID}
      secretAccessKey: {name: aws-creds, key: ACCESS_SECRET_KEY}
"#;

    fn secret(keys: &[&str]) -> Secret {
        let data = keys
            .iter()
            .map(|k| (k.to_string(), k8s_openapi::ByteString(b"x".to_vec())))
            .collect::<BTreeMap<_, _>>();
        Secret {
            data: Some(data),
            ..Secret::default()
        }
    }

    #[test]
    fn resolved_references_are_not_reported() {
        let s = secret(&["ACCESS_KEY_ID", "ACCESS_SECRET_KEY"]);
        assert!(missing_secrets(&cluster(SEED), |_| Some(secret_keys(&s))).is_empty());
    }

    #[test]
    fn a_missing_secret_names_field_and_fix() {
        let missing = missing_secrets(&cluster(SEED), |_| None);
        assert_eq!(missing.len(), 2);
        let msg = missing[0].message("default");
        assert!(msg.contains("Secret default/aws-creds not found"), "{msg}");
        assert!(
            msg.contains("spec.backup.s3Credentials.accessKeyId"),
            "{msg}"
        );
        assert!(
            msg.contains("kubectl create secret generic aws-creds"),
            "{msg}"
        );
    }

    fn backup(name: &str, cluster: &str, status: serde_json::Value) -> Backup {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
            "kind": "Backup",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"cluster": {"name": cluster}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn running_backups_name_their_pod() {
        let settings = |pod: &str| serde_json::json!({"targetPod": pod, "jobs": 2, "immediateCheckpoint": true});
        let backups = [
            backup(
                "recorded",
                "postgresql-bkp",
                serde_json::json!({"phase": "running", "instanceID": {"podName": "postgresql-bkp-1"}}),
            ),
            backup(
                "targeted",
                "postgresql-bkp",
                serde_json::json!({"phase": "running", "settings": settings("postgresql-bkp-2")}),
            ),
            backup(
                "done",
                "postgresql-bkp",
                serde_json::json!({"phase": "completed", "instanceID": {"podName": "postgresql-bkp-1"}}),
            ),
            backup(
                "starting",
                "postgresql-bkp",
                serde_json::json!({"phase": "pending", "settings": settings("postgresql-bkp-1")}),
            ),
            backup(
                "failed",
                "postgresql-bkp",
                serde_json::json!({"phase": "failed", "instanceID": {"podName": "postgresql-bkp-1"}}),
            ),
            backup(
                "other",
                "another",
                serde_json::json!({"phase": "running", "instanceID": {"podName": "another-1"}}),
            ),
        ];
        let running = running_backups(&backups.iter().collect::<Vec<_>>(), &cluster(SEED));
        let pairs: Vec<_> = running
            .iter()
            .map(|b| (b.name.as_str(), b.pod.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("recorded", "postgresql-bkp-1"),
                ("targeted", "postgresql-bkp-2"),
                ("starting", "postgresql-bkp-1")
            ]
        );
    }

    #[test]
    fn a_missing_key_is_told_apart_from_a_missing_secret() {
        let s = secret(&["ACCESS_KEY_ID"]);
        let missing = missing_secrets(&cluster(SEED), |_| Some(secret_keys(&s)));
        assert_eq!(missing.len(), 1);
        assert!(missing[0].secret_exists);
        assert!(
            missing[0]
                .message("default")
                .contains("has no key ACCESS_SECRET_KEY")
        );
    }
}
