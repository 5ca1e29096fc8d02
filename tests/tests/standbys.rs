//! Streaming standbys and one archiver (issue 13, items 1, 2, 3's Services, 7), end to end
//! through the local node: the real operator, agents, PostgreSQL, barman and MinIO.
//!
//! `instances: 3` with a backup to the store:
//! - rows written on the primary appear on both standbys, where `pg_is_in_recovery()` is true;
//!   a standby whose agent is killed starts again from its data (no new clone) and streams;
//! - the store's WAL files are the primary's only: timeline 1, as many as the primary's
//!   `pg_stat_archiver` counts; the standbys archived nothing (their `pg_stat_archiver` says 0
//!   and their agents never ran the archive command: no `archive-check.json` beside PGDATA;
//!   the Cluster's `status.archive` is reported by `pg-1` only);
//! - the replication password is in the Cluster's own `pg-replication` Secret only: not in any
//!   pod spec, ConfigMap, Cluster status, log or command line;
//! - scaling 3 → 1 removes `pg-3` and `pg-2`, never `pg-1` (same uid, still writable), and
//!   keeps their claims, and their `status.instancesStatus` entries go (before: kept forever,
//!   nothing removed them); 1 → 3 brings them back streaming, with the rows written meanwhile.
//!
//! Before this issue admission refused `instances: 3` (the CEL rule `self <= 1`).
//!
//! Slow (minutes). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use pgwarden_tests::datapath::{deps, wait_for};
use pgwarden_tests::localnode::pod_psql;
use pgwarden_tests::operator::{apply_yaml, get, list, pod_is_ready};
use pgwarden_tests::world::{StoreWorld, agent_pids, store_world};
use serde_json::Value;

const BUCKET: &str = "pgwarden-standbys";
const READY: Duration = Duration::from_secs(300);
const CLUSTER: &str = "pg";
const PODS: [&str; 3] = ["pg-1", "pg-2", "pg-3"];

/// The shared world (store, node, Secret, operator) with this test's own steps.
struct World<'a>(StoreWorld<'a>);

impl<'a> std::ops::Deref for World<'a> {
    type Target = StoreWorld<'a>;
    fn deref(&self) -> &StoreWorld<'a> {
        &self.0
    }
}

fn world(hint: &str, subnet: u8) -> World<'static> {
    World(store_world(hint, "stby", subnet, BUCKET))
}

impl World<'_> {
    fn cluster_yaml(&self, instances: u32) -> String {
        format!(
            "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {CLUSTER}\nspec:\n  instances: {instances}\n  backup:\n    destinationPath: s3://{BUCKET}/{ns}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
            ns = self.ns.name,
            endpoint = self.s3.endpoint(),
        )
    }

    fn wait_ready(&self, pod: &str) -> Value {
        let mut last = Value::Null;
        let ready = wait_for(READY, Duration::from_secs(1), || {
            let p = get(&self.ns, "pod", pod)?;
            last = p["status"].clone();
            pod_is_ready(&p).then_some(p)
        });
        ready.unwrap_or_else(|| {
            panic!(
                "pod {pod} not ready within {READY:?}; last status: {last}\nits log:\n{}\noperator log:\n{}",
                self.pod_log(pod),
                self.op.log_tail(30)
            )
        })
    }

    fn pod_dir(&self, pod: &Value) -> PathBuf {
        self.state.join("node/pods").join(uid_of(pod))
    }

    fn pod_log(&self, pod: &str) -> String {
        let Some(p) = get(&self.ns, "pod", pod) else {
            return "(no pod)".into();
        };
        std::fs::read_to_string(self.pod_dir(&p).join("logs/postgres.log")).unwrap_or_default()
    }

    /// psql as `postgres` on the pod's socket; `None` when it fails.
    fn try_psql(&self, pod: &Value, sql: &str) -> Option<String> {
        pod_psql(&self.state.join("node"), &uid_of(pod), &deps().pg_bin, sql)
    }

    fn psql(&self, pod: &Value, sql: &str) -> String {
        self.try_psql(pod, sql)
            .unwrap_or_else(|| panic!("psql {sql:?} failed on {}", pod["metadata"]["name"]))
    }

    /// The store's WAL objects of the Cluster: segments and the backup history files of the
    /// standbys' clones (names without a compression suffix).
    fn archived_wal(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .s3
            .list(BUCKET, &format!("{}/{CLUSTER}/wals/", self.ns.name))
            .iter()
            .filter_map(|key| key.rsplit('/').next())
            .map(|name| {
                let compressed = [".gz", ".bz2", ".xz", ".snappy", ".zst", ".lz4"];
                let bare = compressed.iter().find_map(|c| name.strip_suffix(c));
                bare.unwrap_or(name).to_string()
            })
            .collect();
        names.sort();
        names
    }

    /// The agent's state folder beside PGDATA on the claim of `claim`.
    fn state_of(&self, claim: &str) -> PathBuf {
        let dir = self.state.join("node/volumes").join(&self.ns.name);
        let entry = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{claim}-"))
            })
            .unwrap_or_else(|| panic!("no volume of claim {claim} in {}", dir.display()));
        entry.path().join("pgwarden")
    }
}

fn uid_of(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every file under `dir` whose text contains `needle` (logs, pod folders).
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

#[test]
fn three_instances_stream_from_one_archiving_primary_and_scale_down_keeps_it() {
    let w = world("standbys", 90 + (std::process::id() % 30) as u8);
    apply_yaml(&w.ns, &w.cluster_yaml(3));
    let pods: Vec<Value> = PODS.iter().map(|p| w.wait_ready(p)).collect();
    let (primary, standbys) = (&pods[0], &pods[1..]);
    for (pod, role) in pods.iter().zip(["primary", "replica", "replica"]) {
        assert_eq!(
            pod["metadata"]["labels"]["postgresql.k8s.2ndq.io/role"], role,
            "{}",
            pod["metadata"]["name"]
        );
    }

    // Rows written on the primary reach both standbys, which are in recovery.
    w.psql(
        primary,
        "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    assert_eq!(w.psql(primary, "SELECT pg_is_in_recovery()"), "f");
    for standby in standbys {
        let name = standby["metadata"]["name"].clone();
        let seen = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
            let n = w.try_psql(standby, "SELECT count(*) FROM t")?;
            (n == "1000").then_some(())
        });
        assert!(seen.is_some(), "{name} never had the 1000 rows");
        assert_eq!(w.psql(standby, "SELECT pg_is_in_recovery()"), "t", "{name}");
        let streaming = w.psql(standby, "SELECT status FROM pg_stat_wal_receiver");
        assert_eq!(streaming, "streaming", "{name}");
    }
    // A standby's agent killed: it starts again from its clone, never clones again.
    let pgdata = w.state_of("pg-2").parent().unwrap().join("pgdata");
    let kept = pgdata.join("pgwarden-test-kept");
    std::fs::write(&kept, "a re-clone would wipe this").unwrap();
    let pids = agent_pids(&w.state, &w.ns.name, "pg-2");
    assert!(!pids.is_empty(), "no agent of pg-2 found");
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    let restarted = wait_for(READY, Duration::from_secs(1), || {
        let p = get(&w.ns, "pod", "pg-2")?;
        let restarts = p["status"]["containerStatuses"][0]["restartCount"].as_i64()?;
        (restarts >= 1 && pod_is_ready(&p)).then_some(p)
    });
    let restarted = restarted.unwrap_or_else(|| panic!("pg-2 not back:\n{}", w.pod_log("pg-2")));
    assert!(
        kept.exists(),
        "pg-2 was cloned again after its agent's restart"
    );
    w.psql(primary, "INSERT INTO t VALUES (1001)");
    let caught_up = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
        (w.try_psql(&restarted, "SELECT count(*) FROM t")? == "1001").then_some(())
    });
    assert!(
        caught_up.is_some(),
        "pg-2 does not stream after its restart"
    );
    w.psql(primary, "DELETE FROM t WHERE id = 1001");

    let replicas = w.psql(
        primary,
        "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication",
    );
    assert_eq!(replicas, "pg-2,pg-3");

    // One archiver: force a segment out, then the store holds the primary's WAL only.
    let switched = w.psql(primary, "SELECT pg_walfile_name(pg_switch_wal())");
    let archived = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        let names = w.archived_wal();
        names.contains(&switched).then_some(names)
    });
    let names = archived.unwrap_or_else(|| {
        panic!(
            "{switched} never archived; store: {:?}; primary log:\n{}",
            w.archived_wal(),
            w.pod_log("pg-1")
        )
    });
    // Let the archiver settle, then compare its count with the store's.
    std::thread::sleep(Duration::from_secs(3));
    let names_now = w.archived_wal();
    let primary_count: usize = w
        .psql(primary, "SELECT archived_count FROM pg_stat_archiver")
        .parse()
        .unwrap();
    assert!(names.len() <= names_now.len());
    assert!(
        names_now.iter().all(|n| n.starts_with("00000001")),
        "one timeline only: {names_now:?}"
    );
    let mut unique = names_now.clone();
    unique.dedup();
    assert_eq!(unique, names_now, "no WAL file uploaded twice");
    // Each clone is a base backup of the primary: its history file is the primary's too.
    let history = names_now.iter().filter(|n| n.ends_with(".backup")).count();
    assert_eq!(
        history, 2,
        "one backup history file per standby's clone: {names_now:?}"
    );
    assert_eq!(
        names_now.len(),
        primary_count,
        "the store's WAL files are the primary's archived ones: {names_now:?}"
    );
    assert!(w.state_of("pg-1").join("archive-check.json").exists());
    for (standby, claim) in standbys.iter().zip(["pg-2", "pg-3"]) {
        let stats = w.psql(
            standby,
            "SELECT archived_count || ',' || failed_count FROM pg_stat_archiver",
        );
        assert_eq!(stats, "0,0", "{claim} archived nothing");
        let check = w.state_of(claim).join("archive-check.json");
        assert!(
            !check.exists(),
            "{claim}'s agent ran the archive command: {}",
            check.display()
        );
    }

    // The Cluster's archive status is the primary's: no standby's agent reports over it.
    let mut reporters = std::collections::BTreeSet::new();
    let end = std::time::Instant::now() + Duration::from_secs(25);
    while std::time::Instant::now() < end {
        let status = get(&w.ns, "cluster", CLUSTER).unwrap_or_default()["status"].clone();
        if let Some(pod) = status["archive"]["podName"].as_str() {
            reporters.insert(pod.to_string());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        reporters.into_iter().collect::<Vec<_>>(),
        ["pg-1"],
        "status.archive reported by"
    );

    // The password: in the Cluster's Secret only.
    let secret = get(&w.ns, "secret", "pg-replication").expect("the replication Secret");
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Cluster");
    assert_eq!(owner["controller"], true);
    let encoded = secret["data"]["password"].as_str().expect("a password");
    let password = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    assert!(password.len() >= 32, "a long random password");
    for kind in ["pods", "configmaps", "clusters"] {
        let text = serde_json::to_string(&list(&w.ns, kind)).unwrap();
        assert!(
            !text.contains(&password),
            "the password is in a {kind} object"
        );
    }
    for pod in &pods {
        let logs = w.pod_dir(pod).join("logs");
        assert_eq!(files_containing(&logs, &password), Vec::<PathBuf>::new());
    }
    assert!(
        !w.op.log_tail(100_000).contains(&password),
        "the password is in the operator's log"
    );

    // Scale 3 → 1: the standbys go, the primary stays (same pod) and takes writes.
    apply_yaml(&w.ns, &w.cluster_yaml(1));
    let gone = wait_for(Duration::from_secs(120), Duration::from_secs(1), || {
        (get(&w.ns, "pod", "pg-2").is_none() && get(&w.ns, "pod", "pg-3").is_none()).then_some(())
    });
    assert!(
        gone.is_some(),
        "pg-2 and pg-3 still there after scaling to 1"
    );
    let kept = get(&w.ns, "pod", "pg-1").expect("the primary stays");
    assert_eq!(
        uid_of(&kept),
        uid_of(primary),
        "the primary's pod was not replaced"
    );
    assert_eq!(
        w.psql(&kept, "INSERT INTO t VALUES (1001) RETURNING id"),
        "1001"
    );
    // The removed pods' instancesStatus entries go (the primary's agent forgets a silent
    // entry whose pod is gone): the failover's facts are the live instances'.
    let mut entries = Value::Null;
    let pruned = wait_for(Duration::from_secs(90), Duration::from_secs(1), || {
        entries = get(&w.ns, "cluster", CLUSTER)?["status"]["instancesStatus"].clone();
        let names: Vec<&str> = entries
            .as_array()?
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        (names == ["pg-1"]).then_some(())
    });
    assert!(pruned.is_some(), "entries of removed pods kept: {entries}");
    // Claims follow the documented rule: kept.
    for claim in ["pg-2", "pg-3"] {
        assert!(get(&w.ns, "pvc", claim).is_some(), "claim {claim} kept");
    }

    // 1 → 3: the standbys come back on their claims and catch up with what was written alone.
    apply_yaml(&w.ns, &w.cluster_yaml(3));
    for name in ["pg-2", "pg-3"] {
        let standby = w.wait_ready(name);
        let seen = wait_for(Duration::from_secs(60), Duration::from_millis(500), || {
            (w.try_psql(&standby, "SELECT count(*) FROM t")? == "1001").then_some(())
        });
        assert!(
            seen.is_some(),
            "{name} never had the row written while it was gone"
        );
        assert_eq!(
            w.psql(&standby, "SELECT pg_is_in_recovery()"),
            "t",
            "{name}"
        );
    }
}
