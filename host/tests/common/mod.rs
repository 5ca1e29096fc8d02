//! What the policy test binaries share: where the built modules are, and one engine whose
//! compiled modules are cached on disk (each test compiles a module once per digest).
//!
//! Modules come from `PGWARDEN_POLICY_DIR` (set by `cargo xtask test`), else
//! `target/policies/` (what `cargo xtask build-policies` writes).

use std::path::{Path, PathBuf};

use pgwarden::policy::{Engine, EngineConfig};

/// The path of the built policy module `name`.
pub fn module_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("PGWARDEN_POLICY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies"));
    dir.join(format!("{name}.wasm"))
}

/// The bytes of the built policy module `name`; a missing one says how to build it.
pub fn module(name: &str) -> Vec<u8> {
    let path = module_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read policy module {} ({e}): run `cargo xtask build-policies` first",
            path.display()
        )
    })
}

/// An engine with the disk cache shared by the tests.
pub fn engine() -> Engine {
    let cache_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policy-cache"));
    Engine::new(EngineConfig {
        cache_dir,
        ..Default::default()
    })
    .unwrap()
}
