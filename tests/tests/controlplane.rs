//! pgwarden's CRDs against a real kube-apiserver: installation, the seed's manifests,
//! admission of bad manifests (with their messages), `kubectl explain` and `kubectl get`.
//!
//! Needs the control-plane binaries: `cargo xtask setup`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::{CRDS, KubectlOutput, shared, with_crds, workspace_root};

const GROUP: &str = "postgresql.k8s.2ndq.io";

#[test]
fn crds_install_and_become_established() {
    let cp = shared();
    let applied = cp
        .install_crds()
        .unwrap_or_else(|e| panic!("kubectl apply -f crds/yaml/ failed: {e}"));
    for crd in CRDS {
        assert!(
            applied.contains(&format!(
                "customresourcedefinition.apiextensions.k8s.io/{crd}"
            )),
            "{crd} not applied: {applied}"
        );
        let jsonpath = "{.spec.group}/{.spec.versions[*].name} \
                        {.status.conditions[?(@.type==\"Established\")].status}";
        let got = cp
            .kubectl(&["get", "crd", crd, "-o", &format!("jsonpath={jsonpath}")])
            .unwrap();
        assert_eq!(got, format!("{GROUP}/v1alpha1 True"), "{crd}");
    }
    let resources = cp
        .kubectl(&["api-resources", "--api-group", GROUP, "-o", "name"])
        .unwrap();
    let mut names: Vec<&str> = resources.lines().collect();
    names.sort_unstable();
    let mut expected = CRDS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
}

#[test]
fn seed_manifests_apply_verbatim() {
    let cp = with_crds();
    let ns = cp.namespace("seed");
    let seed = workspace_root().join("examples/seed");
    let out = ns.kubectl(&["apply", "-f", &seed.display().to_string()]);
    assert!(
        out.success,
        "the seed's manifests were refused:\n{}",
        out.stderr
    );
    for (kind, name) in [
        ("secret", "aws-creds"),
        ("cluster", "postgresql-bkp"),
        ("backup", "backup-example"),
        ("scheduledbackup", "backup-nightly"),
    ] {
        let got = ns.kubectl(&["get", kind, name, "-o", "name"]);
        assert!(
            got.success,
            "{kind}/{name} missing after apply: {}",
            got.stderr
        );
    }
    // Defaults from the schema are filled in by the API server.
    let instances = ns.kubectl(&[
        "get",
        "cluster",
        "postgresql-bkp",
        "-o",
        "jsonpath={.spec.instances}",
    ]);
    assert_eq!(instances.stdout, "1");
}

#[test]
fn seed_wal_example_keeps_compression_and_encryption() {
    let cp = with_crds();
    let ns = cp.namespace("seed-wal");
    let file = workspace_root().join("examples/seed/cluster-wal.yaml");
    let out = ns.kubectl(&["apply", "-f", &file.display().to_string()]);
    assert!(out.success, "cluster-wal.yaml refused:\n{}", out.stderr);
    let wal = ns.kubectl(&[
        "get",
        "cluster",
        "postgresql-bkp",
        "-o",
        "jsonpath={.spec.backup.wal.compression} {.spec.backup.wal.encryption}",
    ]);
    assert_eq!(wal.stdout, "gzip AES256");
}

/// One bad manifest of `tests/fixtures/bad/`, with its header:
/// `# expect: <fragment>` (one or more; each must appear in kubectl's error) and
/// `# update-of: <file>` (a good manifest applied first: the bad one is an update of it).
struct Fixture {
    path: PathBuf,
    expect: Vec<String>,
    update_of: Option<PathBuf>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = workspace_root().join("tests/fixtures/bad");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    paths.into_iter().map(|p| parse_fixture(&p)).collect()
}

fn parse_fixture(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap();
    let header = |key: &str| -> Vec<String> {
        text.lines()
            .take_while(|l| l.starts_with('#'))
            .filter_map(|l| l.strip_prefix(&format!("# {key}:")))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let expect = header("expect");
    assert!(
        !expect.is_empty(),
        "{} has no `# expect:` line",
        path.display()
    );
    Fixture {
        path: path.to_path_buf(),
        expect,
        update_of: header("update-of")
            .first()
            .map(|f| workspace_root().join(f)),
    }
}

#[test]
fn bad_manifests_are_rejected_with_their_message() {
    let cp = with_crds();
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 12,
        "only {} bad manifests",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for fixture in &fixtures {
        let name = fixture.path.file_stem().unwrap().to_string_lossy();
        let ns = cp.namespace(&name);
        if let Some(first) = &fixture.update_of {
            let out = ns.kubectl(&["apply", "-f", &first.display().to_string()]);
            assert!(
                out.success,
                "{}: {} refused: {}",
                name,
                first.display(),
                out.stderr
            );
        }
        let out = ns.kubectl(&["apply", "-f", &fixture.path.display().to_string()]);
        if let Some(problem) = judge(fixture, &out) {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad manifests not rejected as expected:\n\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n\n")
    );
}

/// What is wrong with kubectl's answer to a bad manifest, if anything.
fn judge(fixture: &Fixture, out: &KubectlOutput) -> Option<String> {
    if out.success {
        return Some(format!("accepted: {}", out.stdout.trim()));
    }
    let missing: Vec<&String> = fixture
        .expect
        .iter()
        .filter(|e| !out.stderr.contains(e.as_str()))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "message lacks {missing:?}; kubectl said:\n{}",
            out.stderr.trim()
        )
    })
}

#[test]
fn explain_shows_field_docs() {
    let cp = with_crds();
    let out = cp.kubectl(&["explain", "cluster.spec.backup.wal"]).unwrap();
    for text in [
        "GROUP:      postgresql.k8s.2ndq.io",
        "KIND:       Cluster",
        "VERSION:    v1alpha1",
        "WAL archiving options.",
        "compression\t<string>",
        "Compression of WAL files as they are uploaded.",
        "encryption\t<string>",
        // The accepted values, named since a CEL rule replaced the enum (issue 16 item 6).
        "Server-side encryption of WAL files in the bucket: `AES256`",
        "or `aws:kms`",
        "maxParallel\t<integer>",
    ] {
        assert!(
            out.contains(text),
            "`kubectl explain cluster.spec.backup.wal` lacks {text:?}:\n{out}"
        );
    }
    let out = cp
        .kubectl(&["explain", "scheduledbackup.spec.schedule"])
        .unwrap();
    assert!(out.contains("cron expression"), "{out}");
}

#[test]
fn get_shows_printer_columns() {
    let cp = with_crds();
    let ns = cp.namespace("columns");
    let seed = workspace_root().join("examples/seed");
    assert!(
        ns.kubectl(&["apply", "-f", &seed.display().to_string()])
            .success
    );

    let columns = |args: &[&str]| -> (Vec<String>, String) {
        let out = ns.kubectl(args);
        assert!(out.success, "kubectl {args:?}: {}", out.stderr);
        let header = out.stdout.lines().next().unwrap_or_default();
        let cols = header
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        (cols, out.stdout.clone())
    };
    let (cols, out) = columns(&["get", "backups"]);
    assert_eq!(
        cols,
        ["NAME", "CLUSTER", "PHASE", "STARTED", "AGE"],
        "{out}"
    );
    assert!(
        out.lines()
            .nth(1)
            .unwrap()
            .starts_with("backup-example   postgresql-bkp"),
        "{out}"
    );

    let (cols, out) = columns(&["get", "backups", "-o", "wide"]);
    assert_eq!(
        cols,
        [
            "NAME",
            "CLUSTER",
            "PHASE",
            "STARTED",
            "BACKUP ID",
            "ERROR",
            "AGE"
        ],
        "{out}"
    );

    let (cols, out) = columns(&["get", "clusters"]);
    assert_eq!(
        cols,
        ["NAME", "INSTANCES", "READY", "PHASE", "PRIMARY", "AGE"],
        "{out}"
    );

    let (cols, out) = columns(&["get", "scheduledbackups"]);
    assert_eq!(
        cols,
        [
            "NAME",
            "CLUSTER",
            "SCHEDULE",
            "SUSPEND",
            "LAST BACKUP",
            "NEXT BACKUP",
            "AGE"
        ],
        "{out}"
    );
    assert!(out.contains("0 0 2 * * *"), "{out}");

    // The short name and the category.
    let (_, out) = columns(&["get", "pgc"]);
    assert!(out.contains("postgresql-bkp"), "{out}");
    let out = ns.kubectl(&["get", "pgwarden", "-o", "name"]);
    for name in [
        "cluster.postgresql.k8s.2ndq.io/postgresql-bkp",
        "backup.postgresql.k8s.2ndq.io/backup-example",
        "scheduledbackup.postgresql.k8s.2ndq.io/backup-nightly",
    ] {
        assert!(
            out.stdout.contains(name),
            "`kubectl get pgwarden` lacks {name}:\n{}",
            out.stdout
        );
    }
}

/// The harness's client talks to the same API server, with admin rights.
#[tokio::test]
async fn client_lists_the_crds() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{Api, api::ListParams};

    let cp = with_crds();
    let client = cp.client().await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    let list = crds.list(&ListParams::default()).await.unwrap();
    let names: Vec<String> = list
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    for crd in CRDS {
        assert!(
            names.iter().any(|n| n == crd),
            "{crd} not listed: {names:?}"
        );
    }
}

/// The controller-manager runs with RBAC: it gives every new namespace its `default`
/// ServiceAccount.
#[test]
fn controller_manager_creates_default_service_accounts() {
    let cp = shared();
    let ns = cp.namespace("kcm");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if ns
            .kubectl(&["get", "serviceaccount", "default", "-o", "name"])
            .success
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no default ServiceAccount in {}; controller-manager log:\n{}",
            ns.name,
            pgwarden_tests::controlplane::log_tail(
                &cp.dir.join("logs/kube-controller-manager.log"),
                30
            )
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The operator's status writes go through the status subresource; `kubectl describe` and
/// `kubectl get` show them as in the seed's walk-through.
#[test]
fn backup_status_shows_in_describe_and_get() {
    let cp = with_crds();
    let ns = cp.namespace("status");
    let backup = workspace_root().join("examples/seed/backup.yaml");
    assert!(
        ns.kubectl(&["apply", "-f", &backup.display().to_string()])
            .success
    );

    let patch_status = |status: &str| {
        ns.kubectl(&[
            "patch",
            "backup",
            "backup-example",
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(r#"{{"status":{status}}}"#),
        ])
    };
    let out = patch_status(r#"{"phase":"running","startedAt":"2020-04-08T13:45:04Z"}"#);
    assert!(out.success, "status patch refused: {}", out.stderr);
    let described = ns.kubectl(&["describe", "backup", "backup-example"]).stdout;
    for text in [
        "Spec:\n  Cluster:\n    Name:  postgresql-bkp\n",
        "Phase:       running",
        "Started At:  2020-04-08T13:45:04Z",
    ] {
        assert!(
            described.contains(text),
            "describe lacks {text:?}:\n{described}"
        );
    }
    let row = ns.kubectl(&["get", "backups", "--no-headers"]).stdout;
    let fields: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        fields[..3],
        ["backup-example", "postgresql-bkp", "running"],
        "{row}"
    );

    let out = patch_status(r#"{"phase":"completed","stoppedAt":"2020-04-08T13:45:33Z"}"#);
    assert!(out.success, "status patch refused: {}", out.stderr);
    let described = ns.kubectl(&["describe", "backup", "backup-example"]).stdout;
    for text in [
        "Phase:       completed",
        "Stopped At:  2020-04-08T13:45:33Z",
    ] {
        assert!(
            described.contains(text),
            "describe lacks {text:?}:\n{described}"
        );
    }

    let out = patch_status(r#"{"phase":"done"}"#);
    assert!(!out.success, "an unknown phase was accepted");
    assert!(
        out.stderr
            .contains(r#"status.phase: Unsupported value: "done""#),
        "{}",
        out.stderr
    );
}

/// A test that needs a control plane of its own gets one, on its own ports, and it stops
/// when dropped.
#[test]
fn isolated_control_plane_stops_when_dropped() {
    let cp = pgwarden_tests::controlplane::isolated();
    assert_ne!(cp.ports.apiserver, shared().ports.apiserver);
    assert_eq!(cp.kubectl(&["get", "--raw", "/readyz"]).unwrap(), "ok");
    let pids: Vec<u32> = cp.components.iter().map(|c| c.pid).collect();
    let dir = cp.dir.clone();
    drop(cp);
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or_default().trim_start();
        assert!(
            stat.is_empty() || state.starts_with('Z'),
            "pid {pid} still runs: {stat}"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}

/// `spec.postgresql.parameters` through the real API server: a reserved name in any case and
/// a name PostgreSQL would not parse are refused, each named in kubectl's message; an
/// extension's parameter and `wal_level: logical` pass.
#[test]
fn reserved_or_malformed_parameter_names_are_refused_by_name() {
    let cp = with_crds();
    let ns = cp.namespace("parameters");
    let cluster = |parameters: &str| {
        format!(
            "apiVersion: {GROUP}/v1alpha1\nkind: Cluster\nmetadata:\n  name: pg\nspec:\n  postgresql:\n    parameters:\n{parameters}"
        )
    };
    let apply = |yaml: &str| ns.kubectl_with_input(&["apply", "-f", "-"], Some(yaml));
    let refused = [
        (
            "      Archive_Command: /bin/true\n      work_mem: 8MB\n",
            &["spec.postgresql.parameters must not set Archive_Command: pgwarden owns"][..],
        ),
        (
            "      RECOVERY_TARGET_TIME: '2026-01-01'\n",
            &["must not set RECOVERY_TARGET_TIME:"],
        ),
        (
            // The first one found is named (a map's order in CEL is not fixed), and the count.
            "      include_dir: conf.d\n      Port: '5433'\n      work_mem: 8MB\n",
            &["must not set ", " (and one more): pgwarden owns"],
        ),
        (
            "      primary_conninfo: host=x\n",
            &["must not set primary_conninfo:"],
        ),
        (
            "      max-wal-size: 1GB\n      work_mem: 8MB\n",
            &["spec.postgresql.parameters: 'max-wal-size' is not a PostgreSQL parameter name"],
        ),
        (
            "      a.b.c: '1'\n",
            &["'a.b.c' is not a PostgreSQL parameter name"],
        ),
        (
            "      WAL_LEVEL: Minimal\n",
            &["wal_level minimal cannot archive WAL"],
        ),
    ];
    let mut failures = Vec::new();
    for (parameters, expected) in refused {
        let out = apply(&cluster(parameters));
        if out.success || !expected.iter().all(|e| out.stderr.contains(e)) {
            failures.push(format!(
                "{parameters:?}: expected a refusal with {expected:?}; kubectl said: {}{}",
                out.stdout, out.stderr
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let out = apply(&cluster(
        "      pg_stat_statements.max: '5000'\n      wal_level: logical\n      Max_Wal_Size: 2GB\n",
    ));
    assert!(out.success, "a valid Cluster was refused: {}", out.stderr);
}
