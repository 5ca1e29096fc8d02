//! The generated CRDs: committed YAML up to date, structural schemas, enums with their values,
//! CEL rules where promised, the seed's manifests accepted and each bad value rejected by
//! the rule meant for it (evaluated here with kube-cel and a JSON-schema validator; the
//! control-plane tests check the same against a real API server).

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use pgwarden_crds::{
    Backup, Cluster, ReconcilePolicy, ScheduledBackup, crd_file_name, crd_yaml, crds,
};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn crd_of(kind: &str) -> CustomResourceDefinition {
    crds()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap()
}

fn schema_of(kind: &str) -> Value {
    let crd = crd_of(kind);
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap();
    serde_json::to_value(schema).unwrap()
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn committed_yaml_matches_generated() {
    for crd in crds() {
        let path = root().join("crds/yaml").join(crd_file_name(&crd));
        let generated = crd_yaml(&crd);
        if std::env::var_os("UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: regenerate with `cargo run -p pgwarden -- crd --out crds/yaml`",
            path.display()
        );
    }
}

/// Visits every schema node with its JSON pointer.
fn walk<'a>(node: &'a Value, at: String, visit: &mut dyn FnMut(&str, &'a Value)) {
    visit(&at, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, format!("{at}/properties/{name}"), visit);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get(key).filter(|c| c.is_object()) {
            walk(child, format!("{at}/{key}"), visit);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for (i, child) in node
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            walk(child, format!("{at}/{key}/{i}"), visit);
        }
    }
}

#[test]
fn schemas_are_structural() {
    for kind in ["Cluster", "Backup", "ScheduledBackup", "ReconcilePolicy"] {
        let schema = schema_of(kind);
        let mut problems = Vec::new();
        walk(&schema, String::new(), &mut |at, node| {
            let int_or_string = node.get("x-kubernetes-int-or-string") == Some(&json!(true));
            let in_junctor =
                at.contains("/anyOf/") || at.contains("/oneOf/") || at.contains("/allOf/");
            if node.get("$ref").is_some() {
                problems.push(format!("{kind}{at}: $ref"));
            }
            for junctor in ["anyOf", "oneOf", "allOf"] {
                if node.get(junctor).is_some() && !int_or_string {
                    problems.push(format!("{kind}{at}: untyped {junctor}"));
                }
            }
            let typed = node.get("type").is_some()
                || int_or_string
                || node.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if !typed && !in_junctor {
                problems.push(format!("{kind}{at}: no type"));
            }
        });
        assert!(
            problems.is_empty(),
            "not structural:\n{}",
            problems.join("\n")
        );
    }
}

fn at<'a>(schema: &'a Value, pointer: &str) -> &'a Value {
    schema
        .pointer(pointer)
        .unwrap_or_else(|| panic!("no schema node at {pointer}"))
}

fn enum_values(node: &Value) -> Vec<&str> {
    node["enum"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect()
}

const BACKUP: &str = "/properties/spec/properties/backup/properties";

#[test]
fn enums_render_their_values() {
    let cluster = schema_of("Cluster");
    let wal = at(&cluster, &format!("{BACKUP}/wal/properties/compression"));
    assert_eq!(
        enum_values(wal),
        ["gzip", "bzip2", "snappy", "lz4", "xz", "zstd"]
    );
    assert_eq!(
        wal["enum"].as_array().unwrap().len(),
        6,
        "no null among the values: {wal}"
    );
    let data = at(&cluster, &format!("{BACKUP}/data/properties/compression"));
    assert_eq!(enum_values(data), ["gzip", "bzip2", "snappy", "lz4"]);
    let backup = schema_of("Backup");
    assert_eq!(
        enum_values(at(&backup, "/properties/status/properties/phase")),
        ["pending", "running", "completed", "failed"]
    );
    let scheduled = schema_of("ScheduledBackup");
    assert_eq!(
        enum_values(at(
            &scheduled,
            "/properties/spec/properties/backupOwnerReference"
        )),
        ["none", "self", "cluster"]
    );
}

/// `kubectl explain` shows a field's description, not its CEL rule: a field whose accepted
/// values only a rule lists (encryption: an enum would stop the API server before CEL can say
/// why SHA256 is wrong) names them in its description, as an enum field shows its values.
#[test]
fn fields_checked_by_a_cel_list_name_the_accepted_values_in_their_description() {
    let mut checked = Vec::new();
    for kind in ["Cluster", "Backup", "ScheduledBackup", "ReconcilePolicy"] {
        let schema = schema_of(kind);
        walk(&schema, String::new(), &mut |at, node| {
            let rules = node["x-kubernetes-validations"].as_array();
            let listed = rules
                .into_iter()
                .flatten()
                .filter_map(|r| r["rule"].as_str());
            for rule in listed.filter(|r| r.starts_with("self in [")) {
                let description = node["description"].as_str().unwrap_or_default();
                for value in rule.split('\'').skip(1).step_by(2) {
                    assert!(
                        description.contains(value),
                        "{kind}{at}: the description does not name the accepted value {value:?} (rule {rule}): {description:?}"
                    );
                }
                checked.push(format!("{kind}{at}"));
            }
        });
    }
    assert!(
        checked
            .iter()
            .any(|c| c.ends_with("/wal/properties/encryption")),
        "no encryption field found: {checked:?}"
    );
}

#[test]
fn cel_rules_are_where_promised() {
    let promised = [
        ("Cluster", format!("{BACKUP}/destinationPath")),
        ("Cluster", format!("{BACKUP}/endpointURL")),
        ("Cluster", format!("{BACKUP}/retentionPolicy")),
        ("Cluster", format!("{BACKUP}/s3Credentials")),
        ("Cluster", format!("{BACKUP}/wal/properties/encryption")),
        ("Cluster", format!("{BACKUP}/data/properties/encryption")),
        ("Cluster", "/properties/spec/properties/bootstrap".into()),
        (
            "Cluster",
            "/properties/spec/properties/bootstrap/properties/recovery".into(),
        ),
        (
            "Cluster",
            "/properties/spec/properties/postgresql/properties/parameters".into(),
        ),
        ("Backup", "/properties/spec".into()),
        ("ScheduledBackup", "/properties/spec".into()),
        (
            "ScheduledBackup",
            "/properties/spec/properties/schedule".into(),
        ),
        (
            "ReconcilePolicy",
            "/properties/spec/properties/module".into(),
        ),
    ];
    for (kind, pointer) in promised {
        let schema = schema_of(kind);
        let rules = at(&schema, &pointer)["x-kubernetes-validations"].as_array();
        assert!(
            rules.is_some_and(|r| !r.is_empty()),
            "{kind}{pointer} has no x-kubernetes-validations"
        );
        for rule in rules.unwrap() {
            assert!(
                rule.get("message").is_some() || rule.get("messageExpression").is_some(),
                "{kind}{pointer}: rule without a message: {rule}"
            );
        }
    }
}

#[test]
fn kinds_have_printer_columns_short_names_and_categories() {
    for crd in crds() {
        let kind = &crd.spec.names.kind;
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty()),
            "{kind}: no short name"
        );
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["pgwarden".to_string()][..]),
            "{kind}"
        );
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap();
        assert_eq!(columns.last().unwrap().name, "Age", "{kind}: last column");
    }
    let backup = crd_of("Backup");
    let names: Vec<_> = backup.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .filter(|c| c.priority.unwrap_or(0) == 0)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["Cluster", "Phase", "Started", "Age"]);
}

/// `a` is contained in `b`: every field of `a` is in `b` with the same value.
fn is_subset(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| is_subset(v, w))),
        _ => a == b,
    }
}

fn round_trip(doc: &Value) -> Value {
    fn via<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> Value {
        serde_json::to_value(serde_json::from_value::<T>(doc.clone()).unwrap()).unwrap()
    }
    match doc["kind"].as_str().unwrap() {
        "Cluster" => via::<Cluster>(doc),
        "Backup" => via::<Backup>(doc),
        "ScheduledBackup" => via::<ScheduledBackup>(doc),
        "ReconcilePolicy" => via::<ReconcilePolicy>(doc),
        "Secret" => via::<k8s_openapi::api::core::v1::Secret>(doc),
        other => panic!("unexpected kind {other}"),
    }
}

fn example_documents() -> Vec<(PathBuf, Value)> {
    let mut out = Vec::new();
    for dir in ["examples/seed", "examples/local"] {
        let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "yaml"))
        {
            out.extend(documents(&file).into_iter().map(|d| (file.clone(), d)));
        }
    }
    out
}

#[test]
fn examples_round_trip_through_the_types() {
    let docs = example_documents();
    assert!(
        docs.len() >= 9,
        "expected the seed and local examples, found {}",
        docs.len()
    );
    for (file, doc) in docs {
        let back = round_trip(&doc);
        assert!(
            is_subset(&doc, &back),
            "{} lost data in a round trip:\n{doc}\n{back}",
            file.display()
        );
    }
}

/// What admission would say of `object` (and `old`, for an update): schema violations
/// (required, enum, minimum, pattern) and failed CEL rules with their messages.
fn admission_errors(object: &Value, old: Option<&Value>) -> Vec<String> {
    let schema = schema_of(object["kind"].as_str().unwrap());
    let mut errors: Vec<String> = match jsonschema::validator_for(&schema) {
        Ok(validator) => validator
            .iter_errors(object)
            .map(|e| format!("{}: {}", e.instance_path, e))
            .collect(),
        Err(e) => panic!("schema does not compile: {e}"),
    };
    if let Err(cel) = kube_cel::Validator::new().validate(&schema, object, old) {
        errors.extend(cel.iter().map(|e| e.to_string()));
    }
    errors
}

#[test]
fn examples_pass_admission() {
    for (file, doc) in example_documents()
        .into_iter()
        .filter(|(_, d)| d["kind"] != "Secret")
    {
        let errors = admission_errors(&doc, None);
        assert!(errors.is_empty(), "{} rejected: {errors:?}", file.display());
    }
}

fn seed_cluster() -> Value {
    documents(&root().join("examples/seed/cluster.yaml")).remove(0)
}

fn with(mut doc: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut node = &mut doc;
    for part in parent.split('/').skip(1) {
        if node.get(part).is_none() {
            node[part] = json!({});
        }
        node = node.get_mut(part).unwrap();
    }
    node[key] = value;
    doc
}

fn without(mut doc: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    doc.pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap()
        .remove(key);
    doc
}

fn assert_rejected(object: &Value, old: Option<&Value>, expected: &str) {
    let errors = admission_errors(object, old);
    assert!(
        errors.iter().any(|e| e.contains(expected)),
        "expected an error containing {expected:?}, got {errors:?}"
    );
}

#[test]
fn seed_sha256_encryption_is_rejected_as_a_hash() {
    let bad = with(
        seed_cluster(),
        "/spec/backup/wal",
        json!({"compression": "gzip", "encryption": "SHA256"}),
    );
    assert_rejected(
        &bad,
        None,
        "SHA256 is a hash, not an encryption: accepted values are AES256 and aws:kms",
    );
    let other = with(seed_cluster(), "/spec/backup/data/encryption", json!("des"));
    assert_rejected(
        &other,
        None,
        "unsupported encryption des: accepted values are AES256 and aws:kms",
    );
    for good in ["AES256", "aws:kms"] {
        let ok = with(seed_cluster(), "/spec/backup/wal/encryption", json!(good));
        let e = admission_errors(&ok, None);
        assert!(e.is_empty(), "{good} rejected: {e:?}");
    }
}

#[test]
fn cluster_bad_values_are_rejected_with_their_rule() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/spec/backup/destinationPath",
            json!("https://bucket/path"),
            "destinationPath must be an S3 URL",
        ),
        (
            "/spec/backup/destinationPath",
            json!("s3://"),
            "destinationPath must be an S3 URL",
        ),
        (
            "/spec/backup/destinationPath",
            json!("s3://my bucket/x"),
            "destinationPath must be an S3 URL",
        ),
        (
            "/spec/backup/endpointURL",
            json!("127.0.0.1:9000"),
            "endpointURL must be an http:// or https:// URL",
        ),
        (
            "/spec/backup/wal/compression",
            json!("rar"),
            "\"rar\" is not one of",
        ),
        (
            "/spec/backup/data/compression",
            json!("zstd"),
            "\"zstd\" is not one of",
        ),
        ("/spec/backup/wal/maxParallel", json!(0), "minimum of 1"),
        ("/spec/instances", json!(0), "minimum of 1"),
        ("/spec/instances", json!(10), "maximum of 9"),
        // The hard ceiling: not two billion policy calls.
        ("/spec/instances", json!(2147483647), "maximum of 9"),
        (
            "/spec/backup/retentionPolicy",
            json!("30 days"),
            "retentionPolicy must be a positive number of days, weeks or months",
        ),
        (
            "/spec/backup/retentionPolicy",
            json!("0d"),
            "like 30d, 4w or 6m",
        ),
        (
            "/spec/backup/s3Credentials/accessKeyId",
            json!({"name": "aws-creds"}),
            "\"key\" is a required property",
        ),
        (
            "/spec/backup/s3Credentials/secretAccessKey",
            json!({"key": "K"}),
            "\"name\" is a required property",
        ),
        (
            "/spec/postgresql/parameters/archive_command",
            json!("/bin/true"),
            "spec.postgresql.parameters must not set archive_command: pgwarden owns archiving",
        ),
        (
            "/spec/bootstrap",
            json!({"initdb": {}, "recovery": {"backup": {"name": "b"}}}),
            "set either initdb or recovery, not both",
        ),
        (
            "/spec/bootstrap/recovery",
            json!({}),
            "set exactly one of backup",
        ),
        (
            "/spec/storage/size",
            json!("lots"),
            "storage.size must be a positive Kubernetes quantity",
        ),
        (
            "/spec/backup/serverName",
            json!("../other"),
            "serverName is one folder name",
        ),
        (
            "/spec/policy",
            json!("Bad Name!"),
            "spec.policy must be the name of a ReconcilePolicy",
        ),
        (
            "/spec/postgresql/parameters/wal_level",
            json!("minimal"),
            "wal_level minimal cannot archive WAL",
        ),
        (
            "/spec/bootstrap/recovery",
            json!({"backup": {"name": "b"}, "recoveryTarget": {"targetLSN": "0/3000060", "targetName": "x"}}),
            "set at most one of targetTime",
        ),
        (
            "/spec/bootstrap/recovery",
            json!({"backup": {"name": "b"}, "recoveryTarget": {"targetTime": "yesterday"}}),
            "targetTime must be an RFC 3339 timestamp",
        ),
    ];
    for (pointer, value, expected) in cases {
        let bad = with(seed_cluster(), pointer, value);
        assert_rejected(&bad, None, expected);
    }
    let half = without(seed_cluster(), "/spec/backup/s3Credentials/secretAccessKey");
    assert_rejected(&half, None, "accessKeyId and secretAccessKey go together");
    let both = with(
        seed_cluster(),
        "/spec/backup/s3Credentials/inheritFromIAMRole",
        json!(true),
    );
    assert_rejected(&both, None, "or inheritFromIAMRole: true (not both)");
}

/// Every name derived from the Cluster's fits 63 characters and is a DNS-1035 label, so a
/// name that would break one is refused with the reason; the longest one allowed passes.
#[test]
fn cluster_names_must_fit_every_derived_name() {
    let named = |name: &str| with(seed_cluster(), "/metadata/name", json!(name));
    let longest = format!(
        "a{}",
        "b".repeat(pgwarden_crds::MAX_CLUSTER_NAME_LENGTH - 1)
    );
    let errors = admission_errors(&named(&longest), None);
    assert!(errors.is_empty(), "{longest} refused: {errors:?}");
    let sixty = "a".repeat(60);
    assert_rejected(
        &named(&sixty),
        None,
        "metadata.name must be at most 54 characters: it names the Services <name>-rw",
    );
    for bad in ["pg.prod", "1pg"] {
        assert_rejected(
            &named(bad),
            None,
            "metadata.name must start with a lowercase letter and contain only lowercase letters, digits and '-' (no '.')",
        );
    }
}

#[test]
fn scheduled_backup_names_fit_the_label_of_their_backups() {
    let named = |name: &str| with(seed_scheduled(), "/metadata/name", json!(name));
    assert!(admission_errors(&named(&"s".repeat(63)), None).is_empty());
    assert_rejected(
        &named(&"s".repeat(64)),
        None,
        "metadata.name must be at most 63 characters: it is the value of the label",
    );
}

fn seed_backup() -> Value {
    documents(&root().join("examples/seed/backup.yaml")).remove(0)
}

fn seed_scheduled() -> Value {
    documents(&root().join("examples/seed/scheduled-backup.yaml")).remove(0)
}

#[test]
fn backup_needs_a_cluster_and_never_changes() {
    assert_rejected(
        &without(seed_backup(), "/spec/cluster"),
        None,
        "\"cluster\" is a required property",
    );
    let changed = with(seed_backup(), "/spec/cluster/name", json!("another"));
    assert_rejected(&changed, Some(&seed_backup()), "Backup spec is immutable");
    assert!(admission_errors(&seed_backup(), Some(&seed_backup())).is_empty());
}

#[test]
fn scheduled_backup_schedule_and_cluster_rules() {
    for schedule in ["every day", "* * * *", "0 0 0 2 * * * *"] {
        let bad = with(seed_scheduled(), "/spec/schedule", json!(schedule));
        assert_rejected(&bad, None, "schedule must be a cron expression of 5 fields");
    }
    // More often than once a minute: only a 6-field seconds field that is not one number.
    for schedule in [
        "* * * * * *",
        "*/10 * * * * *",
        "0,30 0 2 * * *",
        "1-5 * * * * *",
    ] {
        let bad = with(seed_scheduled(), "/spec/schedule", json!(schedule));
        assert_rejected(&bad, None, "schedule fires more than once a minute");
    }
    for schedule in [
        "*/5 * * * *",
        "0 0 2 * * *",
        "@daily",
        "0 30 1 * * MON-FRI",
        "* * * * *",
        " 59 * * * * *",
    ] {
        let ok = with(seed_scheduled(), "/spec/schedule", json!(schedule));
        let e = admission_errors(&ok, None);
        assert!(e.is_empty(), "{schedule} rejected: {e:?}");
    }
    let moved = with(seed_scheduled(), "/spec/cluster/name", json!("another"));
    assert_rejected(&moved, Some(&seed_scheduled()), "spec.cluster is immutable");
    let suspended = with(seed_scheduled(), "/spec/suspend", json!(true));
    assert!(admission_errors(&suspended, Some(&seed_scheduled())).is_empty());
    let owner = with(
        seed_scheduled(),
        "/spec/backupOwnerReference",
        json!("parent"),
    );
    assert_rejected(&owner, None, "\"parent\" is not one of");
}

#[test]
fn reconcile_policy_module_source_rules() {
    let policy = |module: Value| {
        json!({"apiVersion": "postgresql.k8s.2ndq.io/v1alpha1", "kind": "ReconcilePolicy",
               "metadata": {"name": "p"}, "spec": {"module": module}})
    };
    let digest = "a".repeat(64);
    assert!(admission_errors(&policy(json!({"file": "/policies/default.wasm"})), None).is_empty());
    assert!(
        admission_errors(
            &policy(json!({"url": "https://x/p.wasm", "sha256": digest})),
            None
        )
        .is_empty()
    );
    assert_rejected(
        &policy(json!({})),
        None,
        "set exactly one of configMap, file or url",
    );
    assert_rejected(
        &policy(json!({"file": "/a.wasm", "url": "https://x/p.wasm", "sha256": digest})),
        None,
        "set exactly one of configMap, file or url",
    );
    assert_rejected(
        &policy(json!({"url": "https://x/p.wasm"})),
        None,
        "must be pinned by its digest",
    );
    assert_rejected(
        &policy(json!({"file": "/a.wasm", "sha256": "ABC"})),
        None,
        "64 lowercase hex digits",
    );
}

#[test]
fn postgresql_parameters_are_refused_by_name_form_and_reserved_in_any_case() {
    let param = |name: &str, value: &str| {
        with(
            seed_cluster(),
            "/spec/postgresql/parameters",
            json!({ name: value, "work_mem": "8MB" }),
        )
    };
    let reserved = [
        "Archive_Command",
        "ARCHIVE_MODE",
        "archive_timeout",
        "archive_library",
        "restore_command",
        "archive_cleanup_command",
        "recovery_end_command",
        "recovery_target",
        "Recovery_Target_Time",
        "recovery_target_timeline",
        "recovery_target_action",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "listen_addresses",
        "Port",
        "unix_socket_directories",
        "data_directory",
        "hba_file",
        "ident_file",
        "config_file",
        "include",
        "include_dir",
        "INCLUDE_IF_EXISTS",
    ];
    for name in reserved {
        assert_rejected(
            &param(name, "x"),
            None,
            &format!("spec.postgresql.parameters must not set {name}:"),
        );
    }
    for name in [
        "max wal size",
        "1st",
        "a.b.c",
        "shared-buffers",
        ".x",
        "x.",
        "",
    ] {
        assert_rejected(
            &param(name, "1"),
            None,
            &format!("spec.postgresql.parameters: '{name}' is not a PostgreSQL parameter name"),
        );
    }
    assert_rejected(
        &param("WAL_LEVEL", " Minimal"),
        None,
        "wal_level minimal cannot archive WAL",
    );
    for name in [
        "max_wal_size",
        "Shared_Buffers",
        "_x1",
        "pg_stat_statements.max",
        "recovery_prefetch",
        "wal_level",
    ] {
        let ok = param(name, "logical");
        let errors = admission_errors(&ok, None);
        assert!(errors.is_empty(), "{name} refused: {errors:?}");
    }
}

/// `spec.env` may not override what pgwarden sets; the message names the variable. The
/// boto3 ≥ 1.36 setting a non-AWS store needs, and a ServiceAccount template, pass.
#[test]
fn env_refuses_pgwarden_variables_by_name() {
    let env = |name: &str| {
        with(
            seed_cluster(),
            "/spec/env",
            json!([{"name": "TZ", "value": "UTC"}, {"name": name, "value": "x"}]),
        )
    };
    for name in [
        "AWS_SECRET_ACCESS_KEY",
        "PGDATA",
        "POD_NAME",
        "PGWARDEN_CLUSTER",
    ] {
        assert_rejected(
            &env(name),
            None,
            &format!("spec.env must not set {name}: pgwarden sets it"),
        );
    }
    assert_rejected(&env("1X"), None, "/spec/env/1/name");
    let ok = with(
        env("AWS_REQUEST_CHECKSUM_CALCULATION"),
        "/spec/serviceAccountTemplate",
        json!({"metadata": {
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/pg"},
            "labels": {"team": "a"}
        }}),
    );
    let errors = admission_errors(&ok, None);
    assert!(errors.is_empty(), "{errors:?}");
}
