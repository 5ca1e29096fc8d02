//! Fixture files as a policy author writes them: cases that extend a base, and blessing that
//! writes each case back into the file (and the format) it came from.

use std::path::{Path, PathBuf};

use pgwarden_sdk::testing::{Evaluator, Expectation, bless_dir, load_case, load_dir};
use pgwarden_sdk::types::{Outcome, Request, Settings};
use serde_json::{Value, json};

/// Answers with the name and instance count of the request's Cluster: each case gets its
/// own answer, so a case blessed into another's file shows.
struct Echo;

impl Evaluator for Echo {
    fn evaluate(&self, _settings: &Settings, request: &Request) -> Result<Outcome, String> {
        let Request::ArchiveSettings { cluster } = request else {
            return Err("only archive-settings".into());
        };
        Ok(Outcome::Allowed(json!({
            "cluster": cluster.metadata.name,
            "instances": cluster.spec.instances,
        })))
    }
}

fn cluster(name: &str, instances: u32) -> Value {
    json!({
        "apiVersion": "postgresql.k8s.2ndq.io/v1alpha1",
        "kind": "Cluster",
        "metadata": { "name": name, "namespace": "default" },
        "spec": { "instances": instances, "backup": { "destinationPath": "s3://b/p" } },
    })
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pgwarden-fixtures-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap()
}

fn case_file(request: Value, expect: Value) -> String {
    serde_json::to_string_pretty(&json!({ "request": request, "expect": expect })).unwrap()
}

/// A `.json` case sorts before a `.yaml` one: before the fix, blessing paired the `.yaml`
/// files with every case in order, so `a.json`'s answer went into `b.yaml` and `a.json`
/// was never written.
#[test]
fn bless_writes_each_case_into_its_own_file_and_format() {
    let dir = scratch("bless");
    let request = |name, n| json!({ "decision": "archive-settings", "cluster": cluster(name, n) });
    write(
        &dir,
        "a.json",
        &case_file(request("alpha", 1), json!({ "allowed": null })),
    );
    let yaml = format!(
        "# The beta cluster.\nrequest:\n  {}\nexpect:\n  allowed: null\n",
        serde_json::to_string(&request("beta", 2)).unwrap()
    );
    write(&dir, "b.yaml", &yaml);

    assert_eq!(bless_dir(&dir, &Echo).unwrap(), 2);

    let a: Value = serde_json::from_str(&read(&dir, "a.json")).expect("a.json stays JSON");
    assert_eq!(
        a["expect"],
        json!({ "allowed": { "cluster": "alpha", "instances": 1 } })
    );
    assert_eq!(a["request"], request("alpha", 1), "the request is kept");
    let b = read(&dir, "b.yaml");
    assert!(b.starts_with("# The beta cluster.\nrequest:\n"), "{b}");
    let b = load_case(&dir.join("b.yaml")).unwrap();
    assert_eq!(
        b.expect,
        Expectation::Allowed(json!({ "cluster": "beta", "instances": 2 }))
    );
    let files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "no other file written: {files:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A case names a base and states only what differs: objects merge key by key, `null`
/// removes a key, and the case keeps its own expectation.
#[test]
fn a_case_extends_its_base() {
    let dir = scratch("base");
    std::fs::create_dir_all(dir.join("base")).unwrap();
    let base =
        json!({ "request": { "decision": "archive-settings", "cluster": cluster("base", 2) } });
    write(&dir, "base/cluster.yaml", &base.to_string());
    write(
        &dir,
        "three.yaml",
        "base: base/cluster.yaml\nrequest:\n  cluster:\n    spec: { instances: 3, backup: null }\nexpect:\n  allowed: { cluster: base, instances: 3 }\n",
    );
    write(
        &dir,
        "renamed.yaml",
        "base: three.yaml\nrequest:\n  cluster:\n    metadata: { name: other }\nexpect:\n  denied: x\n",
    );

    let cases = load_dir(&dir).unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["renamed", "three"],
        "bases in a subfolder are not cases"
    );
    let three = &cases[1];
    let Request::ArchiveSettings { cluster } = &three.request else {
        panic!("{:?}", three.request)
    };
    assert_eq!(cluster.spec.instances, 3);
    assert!(cluster.spec.backup.is_none(), "null removes the base's key");
    assert_eq!(cluster.metadata.namespace.as_deref(), Some("default"));
    let Request::ArchiveSettings { cluster } = &cases[0].request else {
        panic!()
    };
    assert_eq!(cluster.metadata.name.as_deref(), Some("other"));
    assert_eq!(cluster.spec.instances, 3, "bases chain");
    assert_eq!(cases[0].expect, Expectation::Denied("x".into()));

    // Blessing a derived case keeps it short: only its expectation is rewritten.
    bless_dir(&dir, &Echo).unwrap();
    let three = read(&dir, "three.yaml");
    assert!(
        three.starts_with("base: base/cluster.yaml\nrequest:\n  cluster:\n"),
        "{three}"
    );
    assert!(!three.contains("destinationPath"), "{three}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_or_circular_base_is_named() {
    let dir = scratch("bad-base");
    write(
        &dir,
        "a.yaml",
        "base: nowhere.yaml\nexpect: { denied: x }\n",
    );
    let err = load_case(&dir.join("a.yaml")).unwrap_err();
    assert!(
        err.contains("a.yaml") && err.contains("nowhere.yaml"),
        "{err}"
    );

    write(&dir, "b.yaml", "base: c.yaml\nexpect: { denied: x }\n");
    write(&dir, "c.yaml", "base: b.yaml\nexpect: { denied: x }\n");
    let err = load_case(&dir.join("b.yaml")).unwrap_err();
    assert!(err.contains("circular") && err.contains("c.yaml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A case's `settings:` reach the evaluator; a case without its own gets its base's.
#[test]
fn settings_are_the_cases_or_its_bases() {
    struct Settled;
    impl Evaluator for Settled {
        fn evaluate(&self, settings: &Settings, _: &Request) -> Result<Outcome, String> {
            Ok(Outcome::Allowed(settings.value().clone()))
        }
    }
    let dir = scratch("settings");
    let request = json!({ "decision": "archive-settings", "cluster": cluster("pg", 1) });
    let with = |settings: Value| {
        serde_json::to_string(&json!({
            "settings": settings, "request": request, "expect": { "allowed": null },
        }))
        .unwrap()
    };
    write(&dir, "a.json", &with(json!({ "cpu": "2" })));
    write(&dir, "b.yaml", "base: a.json\nexpect: { allowed: null }\n");
    write(
        &dir,
        "c.yaml",
        "base: a.json\nsettings: { jobs: 8 }\nexpect: { allowed: null }\n",
    );
    write(
        &dir,
        "d.yaml",
        &format!("request: {request}\nexpect: {{ allowed: null }}\n"),
    );
    assert_eq!(bless_dir(&dir, &Settled).unwrap(), 4);
    let answer = |name| load_case(&dir.join(name)).unwrap().expect;
    assert_eq!(
        answer("a.json"),
        Expectation::Allowed(json!({ "cpu": "2" }))
    );
    assert_eq!(
        answer("b.yaml"),
        Expectation::Allowed(json!({ "cpu": "2" }))
    );
    assert_eq!(answer("c.yaml"), Expectation::Allowed(json!({ "jobs": 8 })));
    assert_eq!(answer("d.yaml"), Expectation::Allowed(json!({})));
    std::fs::remove_dir_all(&dir).unwrap();
}
