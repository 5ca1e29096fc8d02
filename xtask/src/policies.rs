//! Builds the policy crates under `policies/` (and the adversarial test guest under
//! `host/tests/data/adversarial/`) into WebAssembly components.
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

/// The policy crates of the workspace: (package, module name).
const POLICIES: [(&str, &str); 2] = [
    ("pgwarden-policy-default", "default"),
    ("pgwarden-policy-production", "production"),
];

/// The adversarial guest used by the host's sandbox tests (its own Cargo workspace).
const ADVERSARIAL: &str = "host/tests/data/adversarial";

/// Where the built modules land.
pub fn out_dir() -> PathBuf {
    paths::root().join("target").join("policies")
}

/// Builds every policy module; returns the folder holding the `.wasm` files.
pub fn build() -> Result<PathBuf> {
    let root = paths::root();
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
    for (package, _) in POLICIES {
        args.extend(["-p", package]);
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
    let modules = POLICIES
        .iter()
        .map(|(p, m)| (p.to_string(), *m))
        .chain([("pgwarden-policy-adversarial".into(), "adversarial")]);
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
