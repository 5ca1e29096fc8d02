//! The agent's facts reach a real kube-apiserver: `status.archive` of the Cluster and the
//! fact fields of a Backup, written with server-side apply under the `pgwarden-agent` field
//! manager. Needs `cargo xtask setup` (control plane and data path).

use std::time::Duration;

use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::datapath::{
    Instance, InstanceOptions, S3Server, archive_settings, log_tail, wait_for,
};

const CLUSTER: &str = "apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata:
  name: pg
spec:
  instances: 1
  storage:
    size: 1Gi
";

const BACKUP: &str = "apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Backup
metadata:
  name: first
spec:
  cluster:
    name: pg
";

#[test]
fn the_agent_reports_archive_and_backup_facts_to_the_api_server() {
    let cp = with_crds();
    let ns = cp.namespace("agent-report");
    let applied = ns.kubectl_with_input(&["apply", "-f", "-"], Some(CLUSTER));
    assert!(applied.success, "{}", applied.stderr);

    let s3 = S3Server::start();
    s3.create_bucket("report");
    let pg = Instance::start(InstanceOptions {
        settings: archive_settings(&s3, "report", "pg"),
        credentials: s3.credentials.clone(),
        extra_args: vec![],
        env: vec![
            ("KUBECONFIG".into(), cp.kubeconfig.display().to_string()),
            ("POD_NAMESPACE".into(), ns.name.clone()),
            ("PGWARDEN_CLUSTER".into(), "pg".into()),
        ],
    });
    pg.psql("SELECT txid_current()");
    let wal = pg.switch_wal();
    assert!(
        pg.wait_archived(&wal, Duration::from_secs(120)),
        "{}",
        log_tail(&pg.log(), 20)
    );

    let get = |what: &str, path: &str| {
        let out = ns.kubectl(&["get", what, "-o", &format!("jsonpath={path}")]);
        if out.success {
            out.stdout
        } else {
            String::new()
        }
    };
    let reported = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        let last = get("cluster/pg", "{.status.archive.lastArchivedWal}");
        (last.as_str() >= wal.as_str()).then_some(last)
    });
    assert!(
        reported.is_some(),
        "no archive facts on the Cluster: {}",
        log_tail(&pg.log(), 20)
    );
    assert_eq!(get("cluster/pg", "{.status.archive.failedCount}"), "0");
    assert_eq!(get("cluster/pg", "{.status.archive.podName}"), "pg-1");
    let managers = get("cluster/pg", "{.metadata.managedFields[*].manager}");
    assert!(managers.contains("pgwarden-agent"), "{managers}");

    let created = ns.kubectl_with_input(&["apply", "-f", "-"], Some(BACKUP));
    assert!(created.success, "{}", created.stderr);
    let uid = get("backup/first", "{.metadata.uid}");
    let out = pg.pgwarden(&[
        "backup",
        "--name",
        &uid,
        "--backup",
        "first",
        "--namespace",
        &ns.name,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(get("backup/first", "{.status.agent.state}"), "succeeded");
    assert!(get("backup/first", "{.status.backupId}").starts_with("20"));
    assert!(!get("backup/first", "{.status.beginLSN}").is_empty());
    assert!(!get("backup/first", "{.status.endWal}").is_empty());
}
