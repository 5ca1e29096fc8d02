//! Builds the default policy (`policies/default`) into a WebAssembly component and embeds it
//! in the `pgwarden` binary, so that `pgwarden operator` reconciles with no flag
//! (`--default-policy` and a ReconcilePolicy still override it).
//!
//! Why a nested cargo here rather than a committed `.wasm` or an xtask step: a committed blob
//! goes stale with every change of the policy or the SDK, and an xtask step is skipped by a
//! plain `cargo build`/`cargo install`. A nested `cargo build --target wasm32-wasip2` is what
//! `cargo xtask build-policies` runs; it uses the same target folder (`target/wasm`, its own
//! lock, never the outer build's, so no deadlock) and profile, so the two share one build and
//! whichever runs second finds it done. The toolchain file pins the wasm target, so a fresh
//! clone has it. The outer build's jobserver (`CARGO_MAKEFLAGS`) is inherited: the nested
//! build takes no more cores than the outer one was given.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "policy";
const PACKAGE: &str = "pgwarden-policy-default";

fn main() {
    let host = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = host
        .parent()
        .expect("host/ is in the workspace")
        .to_path_buf();
    // What the module is built from: the policy, the SDK it links, the pinned versions and
    // the profile. Anything else of the workspace leaves the embedded module as it is.
    for path in [
        "policies/default/src",
        "policies/default/Cargo.toml",
        "sdk/src",
        "sdk/wit",
        "sdk/Cargo.toml",
        "crds/src",
        "crds/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(path).display());
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("wasm");
    build(&root, &target_dir);
    let built = target_dir
        .join(TARGET)
        .join(PROFILE)
        .join(format!("{}.wasm", PACKAGE.replace('-', "_")));
    // A copy in OUT_DIR: `include_bytes!` then reads a file no later build rewrites.
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("default.wasm");
    std::fs::copy(&built, &out).unwrap_or_else(|e| {
        panic!(
            "cannot copy the built default policy {} to {}: {e}",
            built.display(),
            out.display()
        )
    });
}

/// `cargo build -p pgwarden-policy-default --target wasm32-wasip2 --profile policy`, with the
/// outer build's per-target settings removed: its RUSTFLAGS are for the host, and its
/// workspace wrapper is clippy's under `cargo clippy`.
fn build(root: &Path, target_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "--locked", "-p", PACKAGE, "--target", TARGET])
        .args(["--profile", PROFILE])
        .env("CARGO_TARGET_DIR", target_dir);
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} to build the default policy: {e}"));
    assert!(
        status.success(),
        "building the default policy to embed failed ({status}): {cmd:?}; is the {TARGET} target installed (`rustup target add {TARGET}`)?"
    );
}
