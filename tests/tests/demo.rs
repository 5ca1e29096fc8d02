//! The demo as an end-to-end test: `cargo xtask demo --once` (set-up, control plane, MinIO,
//! the local node, CRDs, the operator, the seed's Secret, Cluster and Backup, a
//! ScheduledBackup, a Cluster recovered from the Backup) must exit 0, having shown WAL
//! archived, the Backups completed and the restored rows.
//!
//! Slow (minutes): it runs the whole seed scenario through the real operator and agent.

use std::process::Command;

use pgwarden_tests::controlplane::workspace_root;

#[test]
fn cargo_xtask_demo_once_passes() {
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "demo", "--once"])
        .current_dir(workspace_root())
        .output()
        .expect("cannot run cargo xtask demo --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask demo --once failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for shown in [
        "WAL archived: ",
        "backup-example: completed",
        "Phase:        completed",
        "scheduled Backup backup-every-minute-",
        "SELECT count(*) FROM demo → 1000",
        "the 1000 rows written before backup-example are in the restored Cluster",
        "demo: torn down",
    ] {
        assert!(
            stdout.contains(shown),
            "the demo did not show {shown:?}:\n{stdout}"
        );
    }
}
