//! Builds the policy crates under `policies/` (and the adversarial test guest under
//! `host/tests/data/adversarial/`) into WebAssembly components.
//!
//! Adding a policy is adding a folder: every `policies/<name>/Cargo.toml` is a policy crate
//! (the workspace's members take `policies/*`), built to `target/policies/<name>.wasm`.
//!
//! `cargo build --target wasm32-wasip2 --profile policy` into `target/wasm/` (its own target
//! dir: a nested build must not share the outer one), then copies each component to
//! `target/policies/<name>.wasm` when it changed. Idempotent: when nothing changed, cargo's
//! no-op check is all it costs. Tests find the folder through `PGWARDEN_POLICY_DIR`.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::paths;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "policy";

/// The folder holding one crate per policy.
const POLICIES: &str = "policies";

/// A policy crate found under [`POLICIES`].
#[derive(Debug, PartialEq, Eq)]
pub struct PolicyCrate {
    /// The package name (`cargo build -p`).
    pub package: String,
    /// The module's name: the folder's (`target/policies/<module>.wasm`).
    pub module: String,
}

/// Every `policies/<module>/Cargo.toml`, sorted by folder name.
pub fn discover(root: &Path) -> Result<Vec<PolicyCrate>> {
    let dir = root.join(POLICIES);
    let entries =
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let folder = entry?.path();
        let manifest = folder.join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let package = package_name(&text)
            .with_context(|| format!("{} has no [package] name", manifest.display()))?;
        let module = folder
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.push(PolicyCrate { package, module });
    }
    found.sort_by(|a, b| a.module.cmp(&b.module));
    Ok(found)
}

/// The `name` of a manifest's `[package]` table (the one key xtask needs; no TOML parser).
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if let Some(value) = line.strip_prefix("name").map(str::trim_start)
            && in_package
            && let Some(value) = value.strip_prefix('=')
        {
            return Some(value.trim().trim_matches('"').to_string());
        }
    }
    None
}

/// The adversarial guest used by the host's sandbox tests (its own Cargo workspace).
const ADVERSARIAL: &str = "host/tests/data/adversarial";

/// Where the built modules land.
pub fn out_dir() -> PathBuf {
    paths::root().join("target").join("policies")
}

/// Builds every policy module; returns the folder holding the `.wasm` files.
pub fn build() -> Result<PathBuf> {
    let root = paths::root();
    let policies = discover(&root)?;
    if policies.is_empty() {
        bail!("no policy crate under {}", root.join(POLICIES).display());
    }
    let target_dir = root.join("target").join("wasm");
    run(Command::new("rustup")
        .args(["target", "add", TARGET])
        .current_dir(&root))?;
    let mut args = vec![
        "build",
        "--locked",
        "--target",
        TARGET,
        "--profile",
        PROFILE,
    ];
    for policy in &policies {
        args.extend(["-p", &policy.package]);
    }
    run(cargo(&root, &target_dir).args(&args))?;
    let manifest = root.join(ADVERSARIAL).join("Cargo.toml");
    run(cargo(&root, &target_dir)
        .args([
            "build",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
            "--manifest-path",
        ])
        .arg(&manifest))?;

    let built = target_dir.join(TARGET).join(PROFILE);
    let out = out_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let modules = policies
        .iter()
        .map(|p| (p.package.as_str(), p.module.as_str()))
        .chain([("pgwarden-policy-adversarial", "adversarial")]);
    for (package, module) in modules {
        let from = built.join(format!("{}.wasm", package.replace('-', "_")));
        copy_if_changed(&from, &out.join(format!("{module}.wasm")))?;
    }
    eprintln!("policy modules in {}", out.display());
    Ok(out)
}

fn cargo(root: &Path, target_dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root)
        .env("CARGO_TARGET_DIR", target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn copy_if_changed(from: &Path, to: &Path) -> Result<()> {
    let new = std::fs::read(from)
        .with_context(|| format!("cannot read the built module {}", from.display()))?;
    if std::fs::read(to).ok().as_deref() == Some(new.as_slice()) {
        return Ok(());
    }
    std::fs::write(to, &new).with_context(|| format!("cannot write {}", to.display()))?;
    eprintln!("wrote {} ({} bytes)", to.display(), new.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_folder_with_a_manifest_is_a_policy() {
        let root = tempfile_dir();
        for (folder, manifest) in [
            (
                "b",
                "[package]\nname = \"pgwarden-policy-b\"\n[lib]\nname = \"x\"\n",
            ),
            (
                "a",
                "[lints]\nworkspace = true\n\n[package]\nname=\"policy-a\"\n",
            ),
        ] {
            let dir = root.join(POLICIES).join(folder);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
        }
        std::fs::create_dir_all(root.join(POLICIES).join("notes")).unwrap();
        let found = discover(&root).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        let crate_of = |package: &str, module: &str| PolicyCrate {
            package: package.into(),
            module: module.into(),
        };
        assert_eq!(
            found,
            [
                crate_of("policy-a", "a"),
                crate_of("pgwarden-policy-b", "b")
            ]
        );
    }

    /// The workspace takes every policy folder as a member, so a new folder needs no edit of
    /// the root manifest either.
    #[test]
    fn the_workspace_finds_the_repository_policies() {
        let root = paths::root();
        let found = discover(&root).unwrap();
        let modules: Vec<&str> = found.iter().map(|p| p.module.as_str()).collect();
        assert!(modules.contains(&"default") && modules.contains(&"production"));
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains("\"policies/*\""),
            "members must glob policies/*"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-policies-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }
}
