//! The operator never takes over what it does not control: objects someone else made under
//! the names a Cluster's objects take (`<cluster>-rw`, `<cluster>-settings`, `<cluster>-agent`,
//! the claim and pod `<cluster>-1`, the Secret `<cluster>-replication`) are left as they are, the Cluster says which, and deleting
//! the Cluster leaves them in place. Against a real kube-apiserver and garbage collector.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use std::collections::BTreeMap;

use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::operator::*;
use serde_json::Value;

const CLUSTER: &str = "pg";

/// Someone else's objects under the Cluster's names: unlabelled, no owner, with content of
/// their own. The pod runs as the ServiceAccount `pg-agent` (theirs), on no node (a scheduler
/// binding it would change it).
const FOREIGN: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: pg-agent, annotations: { team: payments } }
automountServiceAccountToken: false
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: pg-agent }
rules:
  - { apiGroups: [""], resources: ["configmaps"], verbs: ["get"] }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: pg-agent }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: pg-agent }
subjects: [{ kind: ServiceAccount, name: pg-agent }]
---
apiVersion: v1
kind: ConfigMap
metadata: { name: pg-settings }
data: { owner: payments, endpoint: "https://payments.internal" }
---
apiVersion: v1
kind: Secret
metadata: { name: pg-replication }
stringData: { password: "theirs" }
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: { name: pg-1 }
spec:
  accessModes: [ReadWriteOnce]
  resources: { requests: { storage: 1Gi } }
---
apiVersion: v1
kind: Pod
metadata: { name: pg-1 }
spec:
  serviceAccountName: pg-agent
  automountServiceAccountToken: false
  nodeSelector: { no-such-node: "true" }
  containers: [{ name: app, image: "payments:1" }]
---
apiVersion: v1
kind: Service
metadata: { name: pg-rw }
spec:
  selector: { app: payments }
  ports: [{ port: 8080 }]
"#;

/// (kubectl kind, name, the kind as the Cluster names it).
const TAKEN: [(&str, &str, &str); 8] = [
    ("serviceaccount", "pg-agent", "ServiceAccount"),
    ("role", "pg-agent", "Role"),
    ("rolebinding", "pg-agent", "RoleBinding"),
    ("configmap", "pg-settings", "ConfigMap"),
    // The replication password's: never generated over someone else's.
    ("secret", "pg-replication", "Secret"),
    ("pvc", "pg-1", "PersistentVolumeClaim"),
    ("pod", "pg-1", "Pod"),
    ("service", "pg-rw", "Service"),
];

/// What must not change: the whole object but for what the API server's own controllers
/// move (status, and the claim's binding annotations).
fn content(object: &Value) -> Value {
    let mut object = object.clone();
    object.as_object_mut().unwrap().remove("status");
    let meta = object["metadata"].as_object_mut().unwrap();
    for key in ["managedFields", "resourceVersion", "annotations"] {
        meta.remove(key);
    }
    object
}

fn annotations(object: &Value) -> Value {
    object["metadata"]["annotations"].clone()
}

#[test]
fn objects_the_cluster_does_not_control_are_left_alone() {
    let cp = with_crds();
    let ns = cp.namespace("ownership");
    let _op = Operator::start(cp, &ns.name);
    apply_yaml(&ns, FOREIGN);
    let before: BTreeMap<_, _> = TAKEN
        .iter()
        .map(|(kind, name, _)| ((*kind, *name), wait_get(&ns, kind, name)))
        .collect();
    apply_yaml(
        &ns,
        &format!("{}  instances: 1\n", cluster_yaml(CLUSTER, None, false)),
    );

    let cluster = wait_json(&ns, "cluster", CLUSTER, "Ready reason NameInUse", |o| {
        condition(o, "Ready").is_some_and(|c| c.1 == "NameInUse")
    });
    let (status, _, message) = condition(&cluster, "Ready").unwrap();
    eprintln!("Ready: {message}");
    assert_eq!(status, "False");
    for (_, name, kind) in TAKEN {
        assert!(message.contains(&format!("{kind} {name}")), "{message}");
    }
    wait_event(&ns, CLUSTER, "NameInUse", "Service pg-rw");
    let uid = cluster["metadata"]["uid"].as_str().unwrap().to_string();

    // A second reconcile must not have changed anything either.
    annotate(&ns, CLUSTER);
    wait_event(&ns, CLUSTER, "NameInUse", "ServiceAccount pg-agent");
    for ((kind, name), old) in &before {
        let now = get(&ns, kind, name).unwrap_or_else(|| panic!("{kind} {name} is gone"));
        assert_eq!(content(&now), content(old), "{kind} {name} was changed");
        assert_eq!(annotations(&now)["team"], annotations(old)["team"]);
        assert!(
            now["metadata"]["ownerReferences"].is_null(),
            "{kind} {name} was given an owner: {}",
            now["metadata"]["ownerReferences"]
        );
    }

    // Deleting the Cluster: the garbage collector removes what the Cluster owns (a
    // ConfigMap made to be owned by it shows that it ran) and nothing of the others.
    let owned = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: owned-by-pg\n  ownerReferences:\n  - {{apiVersion: postgresql.k8s.2ndq.io/v1alpha1, kind: Cluster, name: {CLUSTER}, uid: {uid}, controller: true}}\n"
    );
    apply_yaml(&ns, &owned);
    let out = ns.kubectl(&["delete", "cluster", CLUSTER]);
    assert!(out.success, "{}", out.stderr);
    wait_gone(&ns, "configmap", "owned-by-pg");
    for (kind, name, _) in TAKEN {
        assert!(
            get(&ns, kind, name).is_some(),
            "{kind} {name} was deleted with the Cluster"
        );
    }
}

/// Touches the Cluster (an annotation) so that it is reconciled again.
fn annotate(ns: &pgwarden_tests::controlplane::Namespace<'_>, name: &str) {
    let out = ns.kubectl(&["annotate", "--overwrite", "cluster", name, "touched=again"]);
    assert!(out.success, "{}", out.stderr);
}
