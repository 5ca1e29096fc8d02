//! What the operator may do, asked of the real API server (issue 11, item 10): the rights of
//! `deploy/operator.yaml`'s ServiceAccount, and of the user the other tests run the operator
//! as, are exactly the set below (`kubectl auth can-i --list`), and the Deployment is locked
//! down (non-root, read-only root filesystem, no capabilities, bounded resources), as the API
//! server's own validation of it (a server-side dry run) accepts. And a Secret no Cluster names
//! never reaches the operator's memory (it watches Secrets by metadata only).
//!
//! That the operator works with exactly these rights is what every other operator test shows:
//! they run it as [`OPERATOR_USER`], bound to this ClusterRole and to nothing else.

use std::collections::{BTreeMap, BTreeSet};

use pgwarden_tests::controlplane::{OPERATOR_USER, with_crds, workspace_root};
use serde_json::Value;

/// Every right the operator holds, `resource[.group][/subresource]` → verbs, as `kubectl auth
/// can-i --list` prints them in a namespace. Why each is needed is said in
/// `deploy/operator.yaml`.
const EXPECTED: &[(&str, &str)] = &[
    // The CRDs: watched; written back only through their status, except the Backups that
    // ScheduledBackups create (server-side apply: patch, and create for a new one) and that
    // retention deletes. The agent's Role grants get on Backups and on the two statuses, which
    // the operator can grant only because it holds them.
    (
        "backups.postgresql.k8s.2ndq.io",
        "create delete get list patch watch",
    ),
    ("backups.postgresql.k8s.2ndq.io/status", "get patch"),
    ("clusters.postgresql.k8s.2ndq.io", "get list watch"),
    ("clusters.postgresql.k8s.2ndq.io/status", "get patch"),
    ("scheduledbackups.postgresql.k8s.2ndq.io", "get list watch"),
    (
        "scheduledbackups.postgresql.k8s.2ndq.io/status",
        "get patch",
    ),
    ("reconcilepolicies.postgresql.k8s.2ndq.io", "get list watch"),
    (
        "reconcilepolicies.postgresql.k8s.2ndq.io/status",
        "get patch",
    ),
    // What a Cluster owns: server-side applied (patch; create when new), deleted when surplus
    // or recreated; no update (the operator never replaces an object).
    ("pods", "create delete get list patch watch"),
    (
        "persistentvolumeclaims",
        "create delete get list patch watch",
    ),
    ("services", "create delete get list patch watch"),
    ("configmaps", "create delete get list patch watch"),
    ("serviceaccounts", "create delete get list patch watch"),
    (
        "roles.rbac.authorization.k8s.io",
        "create delete get list patch watch",
    ),
    (
        "rolebindings.rbac.authorization.k8s.io",
        "create delete get list patch watch",
    ),
    // Secrets: watched by metadata (which needs list and watch) and the one a Cluster names
    // read when it reconciles, to check its keys; created once: each Cluster's generated
    // `<cluster>-replication` (never updated, patched or deleted: its owner's deletion
    // collects it).
    ("secrets", "create get list watch"),
    ("events.events.k8s.io", "create patch"),
    ("leases.coordination.k8s.io", "create get update"),
    // Every authenticated user's (system:basic-user): asking what one may do.
    ("selfsubjectreviews.authentication.k8s.io", "create"),
    ("selfsubjectaccessreviews.authorization.k8s.io", "create"),
    ("selfsubjectrulesreviews.authorization.k8s.io", "create"),
];

/// What the API server grants every ServiceAccount besides (the cluster's public trust
/// bundles, for projected volumes): on top of [`EXPECTED`] for the deployed account.
const EVERY_SERVICE_ACCOUNT: &[(&str, &str)] =
    &[("clustertrustbundles.certificates.k8s.io", "get list watch")];

fn expected(service_account: bool) -> BTreeMap<String, BTreeSet<String>> {
    let defaults = if service_account {
        EVERY_SERVICE_ACCOUNT
    } else {
        &[]
    };
    EXPECTED
        .iter()
        .chain(defaults)
        .map(|(r, verbs)| {
            let verbs = verbs.split_whitespace().map(str::to_string).collect();
            (r.to_string(), verbs)
        })
        .collect()
}

/// The resource rows of `kubectl auth can-i --list` (non-resource URLs left out): resource →
/// verbs, merged over rows.
fn parse_can_i(table: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut rights: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in table.lines().skip(1) {
        let Some(resource) = line.split_whitespace().next() else {
            continue;
        };
        if resource.starts_with('[') {
            continue; // a non-resource URL row: its first column is empty
        }
        let verbs = line.rsplit_once('[').map(|(_, v)| v).unwrap_or_default();
        let verbs = verbs.trim_end().trim_end_matches(']');
        rights
            .entry(resource.to_string())
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_string));
    }
    rights
}

/// The documents of `deploy/operator.yaml`.
fn manifest() -> Vec<Value> {
    let path = workspace_root().join("deploy/operator.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    text.split("\n---")
        .map(|doc| serde_saphyr::from_str::<Value>(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn to_yaml(doc: &Value) -> String {
    serde_saphyr::to_string(doc).unwrap()
}

fn is_kind(doc: &Value, kind: &str) -> bool {
    doc["kind"].as_str() == Some(kind)
}

#[test]
fn the_operator_account_has_exactly_the_expected_rights() {
    let cp = with_crds();
    let ns = cp.namespace("operator-rights");
    // The manifest's Namespace, ServiceAccount, ClusterRole and its binding, as shipped.
    for doc in manifest().iter().filter(|d| !is_kind(d, "Deployment")) {
        let out = cp.kubectl_with_input(&["apply", "-f", "-"], Some(&to_yaml(doc)));
        assert!(out.success, "kubectl apply failed: {}", out.stderr);
    }
    let account = "system:serviceaccount:pgwarden-system:pgwarden-operator";
    for subject in [account, OPERATOR_USER] {
        let table = cp
            .kubectl(&["auth", "can-i", "--list", "-n", &ns.name, "--as", subject])
            .unwrap_or_else(|e| panic!("kubectl auth can-i --list --as {subject}: {e}"));
        let rights = parse_can_i(&table);
        let expected = expected(subject == account);
        let extra: Vec<_> = rights
            .iter()
            .filter(|(r, v)| expected.get(*r) != Some(v))
            .collect();
        let lacking: Vec<_> = expected
            .iter()
            .filter(|(r, v)| rights.get(*r) != Some(v))
            .collect();
        assert!(
            extra.is_empty() && lacking.is_empty(),
            "{subject} may do other than expected;\n granted but not expected (or other verbs): {extra:?}\n expected but not so granted: {lacking:?}\n{table}"
        );
    }
}

#[test]
fn the_deployment_is_locked_down_and_admitted() {
    let cp = with_crds();
    let docs = manifest();
    let deployment = docs
        .iter()
        .find(|d| is_kind(d, "Deployment"))
        .expect("a Deployment in deploy/operator.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let container = &pod["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(security["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert!(security["capabilities"]["add"].is_null(), "{security:?}");
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource} unset: {:?}",
                container["resources"]
            );
        }
    }
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--listen-address"), "{args:?}");
    // The API server's own validation of every document: the Namespace for real (the others
    // are checked in it), the rest as a dry run (nothing runs the image).
    for doc in &docs {
        let dry_run = if is_kind(doc, "Namespace") {
            "none"
        } else {
            "server"
        };
        let out = cp.kubectl_with_input(
            &["apply", &format!("--dry-run={dry_run}"), "-f", "-"],
            Some(&to_yaml(doc)),
        );
        assert!(
            out.success,
            "the API server refuses deploy/operator.yaml: {}",
            out.stderr
        );
    }
}

/// Whether any writable mapping of process `pid` holds one of `needles` (read through
/// `/proc/<pid>/mem`; the operator is this test's child, so it may).
fn memory_holds(pid: u32, needles: &[&[u8]]) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let regions = maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next()?, fields.next()?);
        let (start, end) = range.split_once('-')?;
        let start = u64::from_str_radix(start, 16).ok()?;
        let end = u64::from_str_radix(end, 16).ok()?;
        // Writable data only, and no multi-GiB reservation (nothing is stored there).
        (perms.starts_with("rw") && end - start < 1 << 30).then_some((start, end - start))
    });
    let mut buf = Vec::new();
    for (start, len) in regions {
        buf.resize(len as usize, 0);
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        if needles.iter().any(|n| contains(&buf, n)) {
            return true;
        }
    }
    false
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let mut from = 0;
    while let Some(at) = haystack[from..].iter().position(|b| *b == needle[0]) {
        if haystack[from + at..].starts_with(needle) {
            return true;
        }
        from += at + 1;
    }
    false
}

/// The operator only checks that the keys a Cluster names exist: a Secret no Cluster names
/// never reaches its memory, in any form (before, every Secret of the watched namespaces was
/// cached whole, values included).
#[test]
fn a_secret_no_cluster_names_never_reaches_the_operators_memory() {
    use base64::Engine as _;
    use pgwarden_tests::operator::*;
    let cp = with_crds();
    let ns = cp.namespace("secret-values");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("pgwarden-secret-marker-{nanos}-{}", std::process::id());
    let literal = format!("--from-literal=password={marker}");
    let out = ns.kubectl(&["create", "secret", "generic", "unrelated", &literal]);
    assert!(out.success, "{}", out.stderr);
    let op = Operator::start(cp, &ns.name);
    // A Cluster whose own Secret resolves: the operator has listed and reconciled by then.
    apply_file(&ns, &seed("secret.yaml"));
    apply_file(&ns, &seed("cluster-wal.yaml"));
    let waiting = "the primary's agent has not reported WAL archiving yet";
    wait_condition_message(
        &ns,
        "cluster",
        "postgresql-bkp",
        "ContinuousArchiving",
        waiting,
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let encoded = base64::engine::general_purpose::STANDARD.encode(&marker);
    assert!(
        !memory_holds(op.pid(), &[marker.as_bytes(), encoded.as_bytes()]),
        "the value of Secret {}/unrelated, which no Cluster names, is in the operator's memory",
        ns.name
    );
}
