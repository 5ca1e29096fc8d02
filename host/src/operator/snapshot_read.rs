//! A [`Snapshot`] read from a YAML file of objects, or listed read-only (list and get only)
//! from an API server with the same label selection as the operator's watches.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ListParams};
use kube::{Client, Resource};
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::pod::LABEL_CLUSTER;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::observe::{self, MissingSecret};
use super::snapshot::Snapshot;

/// The kinds a snapshot holds as JSON only, as the operator's caches do.
const OTHERS: [&str; 6] = [
    "PersistentVolumeClaim",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "Role",
    "RoleBinding",
];

/// The uid of an object read from a file that has none: the API server assigns the real one
/// when the object is created. Without a uid the owner references the operator writes (the
/// owner's kind, name and uid) came out empty in a dry run; this one says what it stands for.
pub const PLACEHOLDER_UID: &str = "<uid assigned by the API server>";

/// Fills what the API server would have set on an object created from a hand-written file:
/// the namespace `kubectl apply` places it in (`default`) and a uid ([`PLACEHOLDER_UID`]).
fn as_stored(meta: &mut serde_json::Map<String, Value>) {
    for (field, value) in [("namespace", "default"), ("uid", PLACEHOLDER_UID)] {
        if meta.get(field).is_none_or(Value::is_null) {
            meta.insert(field.into(), value.into());
        }
    }
}

fn typed<K: DeserializeOwned>(value: Value, kind: &str) -> Result<Arc<K>> {
    let name = value["metadata"]["name"]
        .as_str()
        .unwrap_or("(no name)")
        .to_string();
    serde_json::from_value(value)
        .map(Arc::new)
        .with_context(|| format!("{kind} {name} is not a valid {kind}"))
}

impl Snapshot {
    /// Parses multi-document YAML; an object of a kind a reconcile does not read is an error
    /// naming it. Secrets are kept as their key names only; an object without a namespace is
    /// in `default`, one without a uid (written by hand) gets [`PLACEHOLDER_UID`].
    pub fn parse(text: &str) -> Result<Snapshot> {
        let mut snap = Snapshot::default();
        for mut value in serde_saphyr::from_multiple::<Value>(text)? {
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            if let Some(meta) = value["metadata"].as_object_mut() {
                as_stored(meta);
            }
            match kind.as_str() {
                "" if value.is_null() => {}
                "Cluster" => snap.clusters.push(typed(value, &kind)?),
                "Backup" => snap.backups.push(typed(value, &kind)?),
                "ScheduledBackup" => snap.scheduled.push(typed(value, &kind)?),
                "Pod" => snap.pods.push(typed(value, &kind)?),
                "Secret" => snap.add_secret(&*typed::<Secret>(value, &kind)?),
                k if OTHERS.contains(&k) => snap.others.push(value),
                other => bail!(
                    "cannot evaluate objects of kind {other:?}: expected Cluster, Backup, ScheduledBackup, Pod, Secret or {}",
                    OTHERS.join(", ")
                ),
            }
        }
        Ok(snap)
    }

    /// Reads [`Snapshot::parse`] from a file.
    pub fn read(path: &std::path::Path) -> Result<Snapshot> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Snapshot::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn add_secret(&mut self, secret: &Secret) {
        let key = (
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default(),
        );
        let keys = observe::secret_keys(secret);
        self.secrets
            .get_or_insert_with(BTreeMap::new)
            .insert(key, keys);
    }

    /// The Secret references of `cluster` that do not resolve (none when the snapshot
    /// observed no Secret at all: a file input that leaves them out).
    pub fn missing_secrets(&self, cluster: &Cluster) -> Vec<MissingSecret> {
        let Some(secrets) = &self.secrets else {
            return Vec::new();
        };
        let ns = cluster.metadata.namespace.clone().unwrap_or_default();
        observe::missing_secrets(cluster, |name| {
            secrets.get(&(ns.clone(), name.into())).cloned()
        })
    }

    /// Lists `namespace` as the operator watches it (the instance objects by the Cluster
    /// label), then the Secrets labelled with a Cluster and those the Clusters reference
    /// (their key names kept, values dropped).
    pub async fn list(client: &Client, namespace: &str) -> Result<Snapshot> {
        let all = ListParams::default();
        let owned = ListParams::default().labels(LABEL_CLUSTER);
        let mut snap = Snapshot {
            clusters: list(client, namespace, &all).await?,
            backups: list(client, namespace, &all).await?,
            scheduled: list(client, namespace, &all).await?,
            pods: list(client, namespace, &owned).await?,
            ..Snapshot::default()
        };
        snap.others
            .extend(json::<PersistentVolumeClaim>(client, namespace, &owned).await?);
        snap.others
            .extend(json::<Service>(client, namespace, &owned).await?);
        snap.others
            .extend(json::<ConfigMap>(client, namespace, &owned).await?);
        snap.others
            .extend(json::<ServiceAccount>(client, namespace, &owned).await?);
        snap.others
            .extend(json::<Role>(client, namespace, &owned).await?);
        snap.others
            .extend(json::<RoleBinding>(client, namespace, &owned).await?);
        snap.secrets = Some(BTreeMap::new());
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        // The Secrets the Cluster's plan makes (generated ones), by its label.
        for secret in api.list(&owned).await? {
            snap.add_secret(&secret);
        }
        for cluster in snap.clusters.clone() {
            for (_, selector) in observe::secret_references(&cluster) {
                if let Some(secret) = api.get_opt(&selector.name).await? {
                    snap.add_secret(&secret);
                }
            }
        }
        Ok(snap)
    }
}

async fn list<K>(client: &Client, namespace: &str, params: &ListParams) -> Result<Vec<Arc<K>>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let listed = api
        .list(params)
        .await
        .with_context(|| format!("cannot list {} in namespace {namespace}", K::plural(&())))?;
    Ok(listed.items.into_iter().map(Arc::new).collect())
}

/// Listed objects as JSON with their kind and apiVersion (a list's items carry neither).
async fn json<K>(client: &Client, namespace: &str, params: &ListParams) -> Result<Vec<Value>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let items = list::<K>(client, namespace, params).await?;
    Ok(items
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(&**o).unwrap_or_default();
            v["kind"] = K::kind(&()).into();
            v["apiVersion"] = K::api_version(&()).into();
            v
        })
        .collect())
}
