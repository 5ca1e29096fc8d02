//! `kubectl-pgwarden`, the kubectl plugin, against the sandbox: the real control plane, the
//! operator, a Cluster archiving to MinIO through the local node, and a Backup.
//!
//! - `status` shows the primary and the last archived WAL; a missing Cluster is a clear error;
//! - `backup --wait` follows the Backup to `completed`, and the Backup object exists;
//! - `restore` prints manifests (from the Backup, and from the Cluster at a time) that the
//!   API server accepts (`kubectl apply --dry-run=server`);
//! - `logs` shows the instance's log through the API server (the local node serves the
//!   kubelet's `/containerLogs`); `psql` picks the primary's pod and the `postgres`
//!   container. `kubectl exec` itself cannot run here: the local node has no exec API.
//!
//! Slow (a minute or two). Needs `cargo xtask setup` and the plugin built (`cargo build -p
//! kubectl-pgwarden`, or `$PGWARDEN_PLUGIN_BIN`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use pgwarden_tests::controlplane::{Bins, workspace_root};
use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::operator::{apply_yaml, get};
use pgwarden_tests::world::{StoreWorld, store_cluster_yaml, store_world};

const BUCKET: &str = "pgwarden-plugin";
const READY: Duration = Duration::from_secs(300);

fn plugin_bin() -> PathBuf {
    let path = std::env::var_os("PGWARDEN_PLUGIN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/kubectl-pgwarden"));
    assert!(
        path.is_file(),
        "the plugin {} is missing: run `cargo build -p kubectl-pgwarden` (or set $PGWARDEN_PLUGIN_BIN)",
        path.display()
    );
    path
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `kubectl-pgwarden -n <namespace> ARGS` with the sandbox's kubeconfig, and the sandbox's
/// kubectl first on the PATH (the plugin hands `psql` and `logs` to it).
fn plugin(w: &StoreWorld<'_>, args: &[&str]) -> Run {
    let kubectl_dir = Bins::locate().kubectl.parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        kubectl_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(plugin_bin())
        // Before the command's own: after `--` they would be psql's.
        .args(["-n", &w.ns.name])
        .args(args)
        .env("KUBECONFIG", &w.ns.cp.kubeconfig)
        .env("KUBECACHEDIR", w.state.join("kubectl-cache"))
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the plugin");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn dry_run_apply(w: &StoreWorld<'_>, manifest: &str) {
    let out =
        w.ns.kubectl_with_input(&["apply", "--dry-run=server", "-f", "-"], Some(manifest));
    assert!(
        out.success,
        "the API server refused the manifest: {}\n{manifest}",
        out.stderr
    );
}

#[test]
fn the_plugin_shows_backs_up_restores_and_reads_logs_of_a_cluster() {
    let subnet = 140 + (std::process::id() % 20) as u8;
    let w = store_world("plugin", "plg", subnet, BUCKET);

    let missing = plugin(&w, &["status", "nope"]);
    assert!(!missing.ok, "status of a missing Cluster succeeded");
    let want = format!("Cluster nope not found in namespace {}", w.ns.name);
    assert!(missing.stderr.contains(&want), "{}", missing.stderr);

    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 1, ""));
    if w.ready_pod("pg-1", READY).is_none() {
        panic!(
            "pg-1 not ready within {READY:?}:\n{}",
            w.pod_log_tail("pg-1", 40)
        );
    }
    w.pod_psql(
        "pg-1",
        "CREATE TABLE t AS SELECT 1 AS id; SELECT pg_switch_wal()",
    )
    .expect("a write and a WAL switch");
    let archived = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        let c = get(&w.ns, "cluster", "pg")?;
        c["status"]["archive"]["lastArchivedWal"]
            .as_str()
            .map(String::from)
    })
    .expect("a WAL file archived");

    let status = plugin(&w, &["status", "pg"]);
    assert!(status.ok, "{}", status.stderr);
    println!("{}", status.stdout);
    let primary = status.stdout.lines().find(|l| l.contains("Primary"));
    assert!(
        primary.is_some_and(|l| l.contains("pg-1")),
        "{}",
        status.stdout
    );
    // The last archived WAL as the plugin read it: the one seen before, or a later one.
    let now_archived = get(&w.ns, "cluster", "pg").unwrap()["status"]["archive"]["lastArchivedWal"]
        .as_str()
        .map(String::from)
        .unwrap_or_default();
    assert!(
        status.stdout.contains(&archived) || status.stdout.contains(&now_archived),
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains("\x1b["), "colours with NO_COLOR");

    let backup = plugin(&w, &["backup", "pg", "--name", "b1", "--wait"]);
    println!("{}", backup.stdout);
    assert!(backup.ok, "{}\n{}", backup.stdout, backup.stderr);
    assert!(backup.stdout.contains("completed"), "{}", backup.stdout);
    let object = get(&w.ns, "backup", "b1").expect("Backup b1 exists");
    assert_eq!(object["status"]["phase"], "completed", "{object}");
    assert_eq!(object["spec"]["cluster"]["name"], "pg");

    let restore = plugin(&w, &["restore", "pg-restored", "--from-backup", "b1"]);
    assert!(restore.ok, "{}", restore.stderr);
    assert!(restore.stdout.contains("name: b1"), "{}", restore.stdout);
    dry_run_apply(&w, &restore.stdout);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let pitr = plugin(
        &w,
        &[
            "restore",
            "pg-pitr",
            "--from-cluster",
            "pg",
            "--target-time",
            &now,
        ],
    );
    assert!(pitr.ok, "{}", pitr.stderr);
    assert!(pitr.stdout.contains("serverName: pg"), "{}", pitr.stdout);
    assert!(pitr.stdout.contains(&now), "{}", pitr.stdout);
    dry_run_apply(&w, &pitr.stdout);
    let bad = plugin(
        &w,
        &[
            "restore",
            "x",
            "--from-cluster",
            "pg",
            "--target-time",
            "yesterday",
        ],
    );
    assert!(
        !bad.ok && bad.stderr.contains("--target-time"),
        "{}",
        bad.stderr
    );

    // The operator's container is `postgres`; the agent logs as it starts PostgreSQL.
    let logs = plugin(&w, &["logs", "pg", "--instance", "1"]);
    assert!(logs.ok, "{}", logs.stderr);
    assert!(!logs.stdout.trim().is_empty(), "empty log");
    let all = plugin(&w, &["logs", "pg", "--tail", "5"]);
    assert!(all.ok, "{}", all.stderr);
    assert!(
        all.stdout
            .lines()
            .all(|l| l.starts_with("[pod/pg-1/postgres]")),
        "{}",
        all.stdout
    );
    assert!(
        !all.stdout.is_empty() && all.stdout.lines().count() <= 5,
        "{}",
        all.stdout
    );
    let psql = plugin(
        &w,
        &["psql", "pg", "--print-command", "--", "-c", "SELECT 1"],
    );
    assert!(psql.ok, "{}", psql.stderr);
    let exec = format!(
        "--namespace {} exec -i pg-1 -c postgres -- sh -c",
        w.ns.name
    );
    assert!(psql.stdout.contains(&exec), "{}", psql.stdout);
    assert!(
        psql.stdout.trim_end().ends_with("psql -c 'SELECT 1'"),
        "{}",
        psql.stdout
    );
}
