//! One failure path, through a real kube-apiserver: a policy that denies a decision about a
//! Backup says so on that Backup (a condition and a Warning Event naming the policy and the
//! decision), rather than in the operator's log only; and the Backup goes on once the cause
//! is gone. Needs `cargo xtask setup`, `cargo build -p pgwarden` and
//! `cargo xtask build-policies`.

use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::operator::*;

const BACKUP: &str = "apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Backup
metadata:
  name: nightly
spec:
  cluster:
    name: unprotected
";

#[test]
fn a_backup_of_a_cluster_without_spec_backup_says_why_on_the_backup() {
    let cp = with_crds();
    let ns = cp.namespace("backup-denied");
    let _op = Operator::start(cp, &ns.name);
    apply_file(&ns, &seed("secret.yaml"));
    // `cluster_yaml` without a backup nor a policy leaves `spec` empty, which is refused.
    apply_yaml(
        &ns,
        &format!(
            "{}  instances: 1\n",
            cluster_yaml("unprotected", None, false)
        ),
    );
    wait_get(&ns, "cluster", "unprotected");
    apply_yaml(&ns, BACKUP);

    let why = "policy default denied backup-settings: Cluster unprotected has no spec.backup";
    let backup = wait_condition_message(&ns, "backup", "nightly", "PolicyApplied", why);
    let (status, reason, message) = condition(&backup, "PolicyApplied").unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "BackupSettingsDenied"),
        "{message}"
    );
    // `kubectl get backup` shows a phase and why, not an empty status.
    assert_eq!(backup["status"]["phase"], "pending", "{}", backup["status"]);
    assert_eq!(backup["status"]["reason"], "BackupSettingsDenied");
    wait_event(&ns, "nightly", "BackupSettingsDenied", why);

    // The cause removed: the next decision is applied and the condition says so.
    apply_yaml(&ns, &cluster_yaml("unprotected", None, true));
    let backup = wait_condition(&ns, "backup", "nightly", "PolicyApplied", "True");
    let (_, reason, message) = condition(&backup, "PolicyApplied").unwrap();
    assert_eq!(reason, "Applied", "{message}");
    assert_ne!(
        backup["status"]["reason"], "BackupSettingsDenied",
        "{}",
        backup["status"]
    );
}
