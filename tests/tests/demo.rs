//! The demo as an end-to-end test: `cargo xtask demo --once` (set-up, control plane, Garage,
//! the local node, CRDs, the operator, the seed's Secret, Cluster and Backup, a
//! ScheduledBackup) must exit 0, having shown WAL archived and the Backups completed.
//!
//! Slow (minutes): it runs the whole seed scenario through the real operator and agent.

use std::process::Command;

use pgwarden_tests::controlplane::workspace_root;

#[test]
#[ignore = "the whole demo (~4 min); its ScheduledBackup step timed out once in three runs, not yet understood: run with `cargo test -p pgwarden-tests --test demo -- --ignored`"]
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
        "demo: torn down",
    ] {
        assert!(
            stdout.contains(shown),
            "the demo did not show {shown:?}:\n{stdout}"
        );
    }
}
