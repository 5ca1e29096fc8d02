//! Policy settings and storage against a real kube-apiserver (and its controller-manager's
//! volume binder): `ReconcilePolicy.spec.settings` reaches the production policy's decisions
//! live (no operator restart, no recompile), settings the policy refuses keep the ones in
//! force, and an instance's claim grows with `spec.storage.size` but never shrinks.
//!
//! A test binary of its own: ReconcilePolicies are cluster-scoped, so every operator loads
//! them, and the steady-state test of `operator.rs` must not see their status writes.
//!
//! Needs `cargo xtask setup`, `cargo build -p pgwarden` and `cargo xtask build-policies`.

use pgwarden_tests::controlplane::{Namespace, with_crds};
use pgwarden_tests::operator::*;
use serde_json::Value;

const CLUSTER: &str = "tuned";
const POD: &str = "tuned-1";

/// The production policy from its file, with `settings` (YAML lines under `settings:`).
fn production_yaml(name: &str, settings: &str) -> String {
    let module = policy("production").display().to_string();
    format!(
        "{}  settings:\n{settings}",
        file_policy_yaml(name, &module, None)
    )
}

/// The postgres container's resource requests: (cpu, memory).
fn requests(pod: &Value) -> (String, String) {
    let r = &pod["spec"]["containers"][0]["resources"]["requests"];
    let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    (text("cpu"), text("memory"))
}

fn wait_requests(ns: &Namespace<'_>, cpu: &str, memory: &str) -> Value {
    let what = format!("requests cpu {cpu}, memory {memory}");
    wait_json(ns, "pod", POD, &what, |p| {
        requests(p) == (cpu.to_string(), memory.to_string())
    })
}

/// Settings change the pods with no restart; refused settings say why and change nothing.
#[test]
fn settings_change_the_pods_live_and_refused_settings_keep_the_ones_in_force() {
    let cp = with_crds();
    let ns = cp.namespace("policy-settings");
    let op = Operator::start(cp, &ns.name);
    let name = format!("tuned-{}", ns.name);
    let _guard = PolicyGuard(&ns, name.clone());
    apply_yaml(
        &ns,
        &production_yaml(&name, "    cpu: 250m\n    memory: 512Mi\n"),
    );
    eventually(
        &format!("ReconcilePolicy {name} Ready"),
        LOAD_WAIT,
        || match get(&ns, "reconcilepolicy", &name) {
            Some(p) if condition(&p, "Ready").is_some_and(|c| c.0 == "True") => Ok(p),
            other => Err(format!("{other:?}")),
        },
    );
    apply_file(&ns, &seed("secret.yaml"));
    apply_yaml(&ns, &cluster_yaml(CLUSTER, Some(&name), true));
    let first = wait_requests(&ns, "250m", "512Mi");

    // New settings: the same operator process, the same module, new pods.
    apply_yaml(
        &ns,
        &production_yaml(&name, "    cpu: 750m\n    memory: 768Mi\n"),
    );
    let second = wait_requests(&ns, "750m", "768Mi");
    assert_ne!(second["metadata"]["uid"], first["metadata"]["uid"]);
    let policy = get(&ns, "reconcilepolicy", &name).unwrap();
    assert_eq!(condition(&policy, "Ready").unwrap().0, "True");
    let digest = policy["status"]["digest"].clone();

    // Refused settings: Ready False with the policy's reason and the field; nothing changes.
    apply_yaml(
        &ns,
        &production_yaml(&name, "    cpu: 750m\n    memry: 1Gi\n"),
    );
    let refused = wait_condition(&ns, "reconcilepolicy", &name, "Ready", "False");
    let (_, reason, message) = condition(&refused, "Ready").unwrap();
    assert_eq!(reason, "InvalidSettings", "{message}");
    assert!(
        message.contains("memry"),
        "the field is not named: {message}"
    );
    assert!(message.contains("the settings in force stay"), "{message}");
    assert_eq!(refused["status"]["digest"], digest, "the module in force");
    // The Cluster reconciles again (a poke) and keeps the settings in force.
    let out = ns.kubectl(&["annotate", "cluster", CLUSTER, "pgwarden.test/poke=1"]);
    assert!(out.success, "{}", out.stderr);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pod = get(&ns, "pod", POD).expect("the pod stays");
    assert_eq!(pod["metadata"]["uid"], second["metadata"]["uid"]);
    assert_eq!(requests(&pod), ("750m".into(), "768Mi".into()));
    let cluster = wait_converged(&ns, "cluster", CLUSTER);
    assert_eq!(cluster["status"]["policy"]["name"], name.as_str());
    // The process that started serves still: nothing restarted it.
    assert_eq!(op.get("/healthz").map(|(code, _)| code).ok(), Some(200));
    assert!(std::path::Path::new(&format!("/proc/{}", op.pid())).exists());
}

/// Deletes the cluster-scoped StorageClass and PersistentVolume named `.1` at the end.
struct StorageGuard<'a>(&'a Namespace<'a>, String);

impl Drop for StorageGuard<'_> {
    fn drop(&mut self) {
        for kind in ["persistentvolume", "storageclass"] {
            let _ = (self.0.cp).kubectl(&["delete", kind, &self.1, "--wait=false"]);
        }
    }
}

/// A StorageClass that allows expansion, and a volume of it the binder binds the claim to:
/// the API server resizes only a bound claim of such a class.
fn expandable_storage(ns: &Namespace<'_>, class: &str) {
    let yaml = format!(
        "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: {class}\nprovisioner: pgwarden.test/none\nallowVolumeExpansion: true\nvolumeBindingMode: Immediate\n---\napiVersion: v1\nkind: PersistentVolume\nmetadata:\n  name: {class}\nspec:\n  storageClassName: {class}\n  capacity:\n    storage: 10Gi\n  accessModes: [ReadWriteOnce]\n  hostPath:\n    path: /tmp/{class}\n  claimRef:\n    namespace: {}\n    name: {POD}\n",
        ns.name
    );
    let out = ns.cp.kubectl_with_input(&["apply", "-f", "-"], Some(&yaml));
    assert!(out.success, "{}", out.stderr);
}

fn storage_yaml(class: Option<&str>, size: &str) -> String {
    let mut yaml = format!(
        "{}  storage:\n    size: {size}\n",
        cluster_yaml(CLUSTER, None, false)
    );
    if let Some(class) = class {
        yaml.push_str(&format!("    storageClass: {class}\n"));
    }
    yaml
}

fn claim_size(claim: &Value) -> &str {
    claim["spec"]["resources"]["requests"]["storage"]
        .as_str()
        .unwrap_or_default()
}

/// `spec.storage.size` raised: the claim grows; lowered: refused, naming both sizes.
#[test]
fn a_claim_grows_with_the_spec_and_never_shrinks() {
    let cp = with_crds();
    let ns = cp.namespace("claim-growth");
    let class = format!("expand-{}", ns.name);
    let _storage = StorageGuard(&ns, class.clone());
    expandable_storage(&ns, &class);
    let _op = Operator::start(cp, &ns.name);
    apply_yaml(&ns, &storage_yaml(Some(&class), "1Gi"));
    wait_json(&ns, "pvc", POD, "bound", |c| {
        c["status"]["phase"] == "Bound"
    });
    wait_converged(&ns, "cluster", CLUSTER);

    apply_yaml(&ns, &storage_yaml(Some(&class), "2Gi"));
    wait_json(&ns, "pvc", POD, "grown to 2Gi", |c| claim_size(c) == "2Gi");
    wait_converged(&ns, "cluster", CLUSTER);

    apply_yaml(&ns, &storage_yaml(Some(&class), "1Gi"));
    let refused = wait_condition(&ns, "cluster", CLUSTER, "PolicyApplied", "False");
    let (_, reason, message) = condition(&refused, "PolicyApplied").unwrap();
    assert_eq!(reason, "GuardrailRefused", "{message}");
    assert!(
        message.contains(&format!("PersistentVolumeClaim {}/{POD}", ns.name))
            && message.contains("asks for 1Gi, smaller than the claim's 2Gi"),
        "{message}"
    );
    let claim = get(&ns, "pvc", POD).unwrap();
    assert_eq!(claim_size(&claim), "2Gi", "the claim is unchanged");
    assert_eq!(claim["spec"]["storageClassName"], class.as_str());
}

/// A claim the API server cannot grow (here not bound: no volume) says why on the Cluster.
#[test]
fn a_claim_the_api_server_cannot_grow_says_why() {
    let cp = with_crds();
    let ns = cp.namespace("claim-unbound");
    let _op = Operator::start(cp, &ns.name);
    apply_yaml(&ns, &storage_yaml(None, "1Gi"));
    wait_converged(&ns, "cluster", CLUSTER);
    assert_eq!(claim_size(&wait_get(&ns, "pvc", POD)), "1Gi");

    apply_yaml(&ns, &storage_yaml(None, "2Gi"));
    let refused = wait_condition(&ns, "cluster", CLUSTER, "PolicyApplied", "False");
    let (_, reason, message) = condition(&refused, "PolicyApplied").unwrap();
    assert_eq!(reason, "ClaimNotGrown", "{message}");
    let named = format!(
        "the API server refused to grow PersistentVolumeClaim {}/{POD} from 1Gi to 2Gi: ",
        ns.name
    );
    assert!(message.starts_with(&named), "{message}");
    assert!(message.contains("bound"), "{message}");
    assert_eq!(claim_size(&get(&ns, "pvc", POD).unwrap()), "1Gi");
}
