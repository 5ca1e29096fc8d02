//! The core stays pure: nothing in its normal dependency graph can reach the API server, run
//! a policy or start a runtime.

use std::process::Command;

#[test]
fn the_core_depends_on_no_wasmtime_kube_client_or_tokio() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "pgwarden-core",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tree.contains("pgwarden-crds"), "{tree}");
    let crates: Vec<&str> = tree.lines().filter_map(|l| l.split(' ').next()).collect();
    for forbidden in ["wasmtime", "kube-client", "kube-runtime", "tokio"] {
        assert!(
            !crates.contains(&forbidden),
            "pgwarden-core depends on {forbidden}:\n{tree}"
        );
    }
}
