//! Where things live: the workspace root, the gitignored cache and state folders.

use std::path::PathBuf;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// Heavy, versioned build artefacts that survive between runs: `.cache/`, or
/// `$PGWARDEN_CACHE_DIR` to time a cold set-up without deleting the cache others use (the
/// control plane's binaries are then found under `$PGWARDEN_CONTROLPLANE_BIN` or `.cache/`).
pub fn cache() -> PathBuf {
    std::env::var_os("PGWARDEN_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".cache"))
}

/// Where `$PGWARDEN_STATE_DIR` puts the sandbox and the demo instead of `.state/`: a sandbox
/// of its own (the demo test's), which also takes free ports instead of the fixed ones.
pub const STATE_DIR_ENV: &str = "PGWARDEN_STATE_DIR";

/// Runtime state of the local sandbox and the demo: `$PGWARDEN_STATE_DIR`, else `.state/`.
pub fn state() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".state"))
}

/// A build cache shared by every clone on this machine (like Go's build cache): it only
/// speeds up rebuilds, and a fresh machine starts without it. `$PGWARDEN_MACHINE_CACHE`, else
/// `$XDG_CACHE_HOME/pgwarden`, else `~/.cache/pgwarden`.
pub fn machine_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("PGWARDEN_MACHINE_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| cache().join("machine"));
    base.join("pgwarden")
}

/// Builds the `pgwarden` binary a benchmark runs (`--release` or debug) and returns its path
/// under the target folder (`$CARGO_TARGET_DIR` or `target/`).
pub fn build_pgwarden_for_bench(release: bool) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args = vec!["build", "-p", "pgwarden", "--bin", "pgwarden"];
    if release {
        args.insert(1, "--release");
    }
    let status = std::process::Command::new(&cargo)
        .args(&args)
        .current_dir(root())
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        anyhow::bail!("cargo {} failed", args.join(" "));
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("pgwarden"))
}
