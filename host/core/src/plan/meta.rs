//! What every object the planner writes shares: its reference, its owner (the Cluster), its
//! labels and the apply action that carries it.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use pgwarden_crds::Cluster;
use pgwarden_crds::settings::pod;
use serde::Serialize;

use super::actions::{Action, ObjectRef};

/// An object's reference.
pub fn reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectRef {
    ObjectRef {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        namespace: object.meta().namespace.clone(),
        name: object.meta().name.clone().unwrap_or_default(),
    }
}

/// The Cluster's name (empty for an object not yet stored, which the API server never gives).
pub fn cluster_name(cluster: &Cluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
}

/// The controller owner reference to `cluster`.
pub fn owner(cluster: &Cluster) -> OwnerReference {
    cluster.controller_owner_ref(&()).unwrap_or_default()
}

/// The metadata of an object of `cluster`: in its namespace, owned by it, labelled with it
/// (`extra` labels kept).
pub fn object_meta(
    cluster: &Cluster,
    object_name: String,
    extra: BTreeMap<String, String>,
) -> ObjectMeta {
    let mut labels = extra;
    labels.insert(pod::LABEL_CLUSTER.into(), cluster_name(cluster).into());
    ObjectMeta {
        name: Some(object_name),
        namespace: cluster.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner(cluster)]),
        ..Default::default()
    }
}

/// Server-side apply of `object`, whole.
pub fn apply<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Action {
    Action::Apply {
        target: reference(object),
        object: serde_json::to_value(object).unwrap_or_default(),
    }
}

/// A time as the API server writes one (RFC 3339, whole seconds, `Z`): status timestamps.
pub fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
