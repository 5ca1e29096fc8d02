//! Unit tests of the default decisions, one module per decision family, on objects built
//! from JSON as the API server sends them.

use chrono::{DateTime, Utc};
use pgwarden_crds::{Backup, Cluster};
use serde_json::{Value, json};

mod backup;
mod health;
mod pod;
mod schedule;
mod transition;

/// A Cluster `pg` in namespace `ns` with this spec.
fn cluster(spec: Value) -> Cluster {
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Cluster",
        "metadata": { "name": "pg", "namespace": "ns" },
        "spec": spec,
    }))
    .unwrap()
}

/// A store with an access key pair, nothing else set.
fn store() -> Value {
    json!({
        "destinationPath": "s3://backups/pg",
        "s3Credentials": {
            "accessKeyId": { "name": "creds", "key": "id" },
            "secretAccessKey": { "name": "creds", "key": "secret" },
        },
    })
}

/// A Cluster `pg` of two instances backed up to [`store`], plus `backup` merged into the
/// store.
fn backed_up(backup: Value) -> Cluster {
    let mut store = store();
    if let (Some(s), Value::Object(extra)) = (store.as_object_mut(), backup) {
        s.extend(extra);
    }
    cluster(json!({ "instances": 2, "backup": store }))
}

/// A Backup `b` of Cluster `pg` with this spec (besides the cluster) and status.
fn backup(spec: Value, status: Value) -> Backup {
    let mut full = json!({ "cluster": { "name": "pg" } });
    if let (Some(s), Value::Object(extra)) = (full.as_object_mut(), spec) {
        s.extend(extra);
    }
    serde_json::from_value(json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "Backup",
        "metadata": { "name": "b", "namespace": "ns" },
        "spec": full,
        "status": status,
    }))
    .unwrap()
}

fn at(time: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(time)
        .unwrap()
        .with_timezone(&Utc)
}
