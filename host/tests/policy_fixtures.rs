//! The policies' fixture cases through wasmtime, against the built `.wasm` modules: the same
//! cases `cargo test` runs natively in each policy crate.
//!
//! Modules come from `PGWARDEN_POLICY_DIR` (set by `cargo xtask test`), else
//! `target/policies/` (what `cargo xtask build-policies` writes).

mod common;

use std::path::Path;

use common::{engine, module, module_path};
use pgwarden::policy::{Engine, EngineConfig, Limits};

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

/// `pgwarden policy ...` as a user runs it; returns (success, stdout, stderr).
fn pgwarden_policy(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgwarden"))
        .arg("policy")
        .args(args)
        .output()
        .expect("cannot run pgwarden policy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `pgwarden policy eval --module <name>.wasm --input <input> <extra...>`.
fn eval(module: &Path, input: &Path, extra: &[&str]) -> (bool, String, String) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "eval".as_ref(),
        "--module".as_ref(),
        module.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
    ];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    pgwarden_policy(&args)
}

const EVAL_INPUT: &str = r#"
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata: { name: postgresql-bkp, namespace: default, uid: 6f1c2f9e-0000-4000-8000-000000000001 }
spec:
  instances: 1
  backup:
    destinationPath: s3://backups/pg
    s3Credentials:
      accessKeyId: { name: aws-creds, key: ACCESS_KEY_ID }
      secretAccessKey: { name: aws-creds, key: ACCESS_SECRET_KEY }
    wal: { compression: gzip, encryption: AES256 }
---
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Backup
metadata: { name: backup-example, namespace: default, uid: 6f1c2f9e-0000-4000-8000-000000000002 }
spec:
  cluster: { name: postgresql-bkp }
"#;

/// The operator's plan per object: a Cluster's objects to apply (none there yet), and a
/// Backup of a Cluster without a primary pod denied as the operator denies it (the eval of
/// before invented a ready primary and started it).
#[test]
fn policy_eval_prints_each_objects_plan_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("objects.yaml");
    std::fs::write(&input, EVAL_INPUT).unwrap();
    let module = module_path("default");
    let (ok, stdout, stderr) = eval(&module, &input, &["--now", "2026-11-29T12:00:00Z"]);
    assert!(ok, "policy eval failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cluster = &report["Cluster/postgresql-bkp"];
    let applied: Vec<String> = (cluster["actions"].as_array().unwrap().iter())
        .filter(|a| a["action"] == "apply" && a["change"] == "apply")
        .map(|a| format!("{} {}", a["target"]["kind"], a["target"]["name"]))
        .map(|s| s.replace('"', ""))
        .collect();
    for expected in [
        "Pod postgresql-bkp-1",
        "ConfigMap postgresql-bkp-settings",
        "PersistentVolumeClaim postgresql-bkp-1",
    ] {
        assert!(
            applied.iter().any(|a| a == expected),
            "no apply of {expected} in {applied:?}"
        );
    }
    assert_eq!(cluster["status"]["instances"], 0, "{cluster:#}");
    let backup = &report["Backup/backup-example"];
    assert_eq!(backup["status"]["phase"], "pending", "{backup:#}");
    assert_eq!(
        backup["status"]["reason"], "BackupSettingsDenied",
        "{backup:#}"
    );
    assert_eq!(backup["events"][0]["eventType"], "Warning", "{backup:#}");

    // One decision's raw answers, and a clear error for a decision that does not exist.
    let (ok, stdout, _) = eval(&module, &input, &["--decision", "archive-settings"]);
    assert!(ok);
    let only: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let answers = only["decisions"].as_array().unwrap();
    assert_eq!(answers.len(), 1, "{only:#}");
    assert_eq!(answers[0]["decision"], "archive-settings");
    assert_eq!(answers[0]["subject"], "Cluster/postgresql-bkp");
    assert_eq!(answers[0]["allowed"]["compression"], "gzip");
    assert_eq!(answers[0]["allowed"]["encryption"], "AES256");
    let (ok, _, stderr) = eval(&module, &input, &["--decision", "pods"]);
    assert!(!ok);
    assert!(
        stderr.contains("unknown decision \"pods\": expected one of")
            && stderr.contains("instance-pod"),
        "{stderr}"
    );
}

/// A file written by hand has no uid (and may have no namespace): the owner references of
/// the plan are filled as the operator fills them, with the owner's kind and name, and a uid
/// that says it is a placeholder (the dry run of before printed empty strings).
#[test]
fn policy_eval_of_a_hand_written_input_shows_the_owner_references_the_operator_writes() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("objects.yaml");
    let hand_written = EVAL_INPUT
        .replace(
            ", namespace: default, uid: 6f1c2f9e-0000-4000-8000-000000000001",
            "",
        )
        .replace(
            ", namespace: default, uid: 6f1c2f9e-0000-4000-8000-000000000002",
            "",
        );
    assert!(!hand_written.contains("uid:"), "{hand_written}");
    std::fs::write(&input, hand_written).unwrap();
    let (ok, stdout, stderr) = eval(&module_path("default"), &input, &[]);
    assert!(ok, "policy eval failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let actions = report["Cluster/postgresql-bkp"]["actions"]
        .as_array()
        .unwrap();
    let applied: Vec<&serde_json::Value> = (actions.iter())
        .filter(|a| a["action"] == "apply")
        .collect();
    assert!(!applied.is_empty(), "{report:#}");
    for action in applied {
        let meta = &action["object"]["metadata"];
        assert_eq!(meta["namespace"], "default", "{action:#}");
        let owners = meta["ownerReferences"].as_array();
        let owner = &owners.unwrap_or_else(|| panic!("no owner: {action:#}"))[0];
        assert_eq!(
            owner,
            &serde_json::json!({
                "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
                "kind": "Cluster",
                "name": "postgresql-bkp",
                "uid": "<uid assigned by the API server>",
                "controller": true,
            }),
            "{action:#}"
        );
    }
}

/// `--settings` runs the module under a ReconcilePolicy's settings, checked as the operator
/// checks them (the policy's validate-settings names the field at fault).
#[test]
fn policy_eval_runs_the_module_under_the_given_settings() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("objects.yaml");
    std::fs::write(&input, EVAL_INPUT).unwrap();
    let (good, bad) = (dir.path().join("good.yaml"), dir.path().join("bad.yaml"));
    std::fs::write(&good, "cpu: \"2\"\n").unwrap();
    std::fs::write(&bad, "cpu: [1]\n").unwrap();
    let module = module_path("production");
    let settings = |path: &Path| ["--settings".to_string(), path.display().to_string()];
    let args = settings(&good);
    let (ok, stdout, stderr) = eval(&module, &input, &[&args[0], &args[1]]);
    assert!(ok, "policy eval failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let actions = report["Cluster/postgresql-bkp"]["actions"]
        .as_array()
        .unwrap();
    let pod = actions
        .iter()
        .find(|a| a["target"]["kind"] == "Pod")
        .unwrap();
    let requests = &pod["object"]["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(requests["cpu"], "2", "{pod:#}");
    let args = settings(&bad);
    let (ok, _, stderr) = eval(&module, &input, &[&args[0], &args[1]]);
    assert!(!ok);
    assert!(stderr.contains("settings.cpu"), "{stderr}");
}

#[test]
fn policy_eval_names_an_input_of_an_unknown_kind() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("objects.yaml");
    std::fs::write(
        &input,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n",
    )
    .unwrap();
    let module = module_path("default");
    let (ok, _, stderr) = eval(&module, &input, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("cannot evaluate objects of kind \"Deployment\""),
        "{stderr}"
    );
}

#[test]
fn policy_test_reports_each_case_and_fails_on_a_wrong_expectation() {
    let module = module_path("default");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/default/fixtures");
    let (ok, stdout, stderr) = pgwarden_policy(&[
        "test".as_ref(),
        "--module".as_ref(),
        module.as_os_str(),
        fixtures.as_os_str(),
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let cases = std::fs::read_dir(&fixtures).unwrap().count();
    assert!(
        stdout.lines().filter(|l| l.starts_with("pass ")).count() == cases,
        "every case reported:\n{stdout}"
    );

    // A copy of one case with a wrong expectation: reported with a diff, exit status 1.
    let dir = tempfile::tempdir().unwrap();
    let case = std::fs::read_to_string(fixtures.join("archive-settings-seed.yaml")).unwrap();
    std::fs::write(
        dir.path().join("wrong.yaml"),
        case.replace("compression: gzip", "compression: zstd"),
    )
    .unwrap();
    let (ok, stdout, stderr) = pgwarden_policy(&[
        "test".as_ref(),
        "--module".as_ref(),
        module.as_os_str(),
        dir.path().as_os_str(),
    ]);
    assert!(!ok, "a failing case must fail the command:\n{stdout}");
    assert!(stdout.contains("FAIL wrong"), "{stdout}");
    assert!(stdout.contains("-  \"compression\": \"zstd\""), "{stdout}");
    assert!(stdout.contains("+  \"compression\": \"gzip\""), "{stdout}");
    assert!(stderr.contains("1 of 1 cases failed"), "{stderr}");
}
