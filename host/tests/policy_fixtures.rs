//! The policies' fixture cases through wasmtime, against the built `.wasm` modules: the same
//! cases `cargo test` runs natively in each policy crate.
//!
//! Modules come from `PGWARDEN_POLICY_DIR` (set by `cargo xtask test`), else
//! `target/policies/` (what `cargo xtask build-policies` writes).

use std::path::{Path, PathBuf};

use pgwarden::policy::{Engine, EngineConfig, Limits};

fn module(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("PGWARDEN_POLICY_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies"));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read policy module {} ({e}): run `cargo xtask build-policies` first",
            path.display()
        )
    })
}

/// A disk cache shared by the tests: each compiles the module once per digest.
fn engine() -> Engine {
    let cache_dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policy-cache"));
    Engine::new(EngineConfig {
        cache_dir,
        ..Default::default()
    })
    .unwrap()
}

fn run_fixtures(name: &str) {
    let engine = engine();
    let policy = engine.load(&module(name), Limits::default()).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .join(name)
        .join("fixtures");
    let mut report = String::new();
    let results = pgwarden_sdk::testing::run_dir(&dir, &policy, &mut report).unwrap();
    assert!(
        results.len() >= 10,
        "too few cases in {}:\n{report}",
        dir.display()
    );
    assert!(results.iter().all(|r| r.passed), "{name}.wasm:\n{report}");
}

#[test]
fn default_policy_fixtures_pass_through_wasmtime() {
    run_fixtures("default");
}

#[test]
fn production_policy_fixtures_pass_through_wasmtime() {
    run_fixtures("production");
}

#[test]
fn a_failing_case_reports_a_diff() {
    let engine = engine();
    let policy = engine.load(&module("default"), Limits::default()).unwrap();
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/default/fixtures/archive-settings-seed.yaml");
    let mut case = pgwarden_sdk::testing::load_case(&case).unwrap();
    case.expect = pgwarden_sdk::testing::Expectation::Allowed(
        serde_json::json!({ "destinationPath": "s3://elsewhere" }),
    );
    let result = pgwarden_sdk::testing::run_case(&case, &policy);
    assert!(!result.passed);
    assert!(
        result
            .detail
            .contains("-  \"destinationPath\": \"s3://elsewhere\""),
        "{}",
        result.detail
    );
    assert!(
        result
            .detail
            .contains("+  \"destinationPath\": \"s3://backups/pg\""),
        "{}",
        result.detail
    );
}

#[test]
fn loading_is_cached_by_digest_and_reports_the_abi() {
    let engine = Engine::new(EngineConfig::default()).unwrap();
    let bytes = module("production");
    let first = engine.load(&bytes, Limits::default()).unwrap();
    let second = engine.load(&bytes, Limits::default()).unwrap();
    assert_eq!(
        engine.modules_compiled(),
        1,
        "the second load must reuse the compiled module"
    );
    assert_eq!(first.digest(), second.digest());
    assert_eq!(first.digest(), pgwarden::policy::digest(&bytes));
    assert_eq!(second.abi_version(), pgwarden_sdk::types::ABI_VERSION);
}

#[test]
fn the_disk_cache_serves_a_new_engine() {
    let dir = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let bytes = module("default");
    Engine::new(config.clone())
        .unwrap()
        .load(&bytes, Limits::default())
        .unwrap();
    let files = walk(dir.path());
    assert!(
        files > 0,
        "nothing was written to the module cache {}",
        dir.path().display()
    );
    let policy = Engine::new(config)
        .unwrap()
        .load(&bytes, Limits::default())
        .unwrap();
    assert_eq!(policy.abi_version(), pgwarden_sdk::types::ABI_VERSION);
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}
