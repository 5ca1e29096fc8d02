//! `cargo xtask bench reconcile --clusters N`: the operator against a real control plane with
//! N Clusters. Figures: time to steady state (every Cluster `PolicyApplied` True at its
//! current generation), API writes per reconcile while converging and in the steady state
//! (goal 0), and the operator's peak RSS. Printed, and written to
//! `target/bench/reconcile.json`.
//!
//! Measured 2026-11-29 on the 2-core development machine (otherwise idle), release operator
//! (`cargo build --release -p pgwarden`, then
//! `PGWARDEN_BIN=$PWD/target/release/pgwarden cargo xtask bench reconcile --clusters N`):
//!
//! ```text
//!   N      to steady state   converging reconciles / writes (per reconcile)   steady writes   peak RSS
//!   100    7.1 s             362 / 1106 (3.06)                                0 of 100        44.7 MiB
//!   1000   60.0 s            3688 / 11092 (3.01)                              0 of 1000       197.9 MiB
//! ```
//!
//! The API server's audit log agrees: every request the operator made while converging was a
//! write (11092 at N=1000: it reads only its watch caches), and it made none at all in the
//! steady state (the Lease, renewed every 5 s, aside). About 11 writes per Cluster: its
//! ServiceAccount, Role, RoleBinding, settings ConfigMap, claim, Pod, three Services, status,
//! Event. The control plane on the same two cores bounds the time, not the operator (on
//! 2026-11-25, sampled with `ps`: kube-apiserver ~86% of a core, the operator ~16%).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{ControlPlane, Isolated, isolated};
use pgwarden_tests::operator::{Operator, binary, policy};
use serde_json::{Value, json};

use crate::paths;

const NS: &str = "bench";

/// The figures of one run.
#[derive(Debug, Default)]
struct Figures {
    clusters: usize,
    seconds_to_steady: f64,
    converge_reconciles: f64,
    converge_writes: f64,
    steady_reconciles: f64,
    steady_writes: f64,
    /// From the API server's audit log: (requests of every verb, writes) of the operator.
    converge_audited: (usize, usize),
    steady_audited: (usize, usize),
    peak_rss_mib: f64,
}

/// The operator's (requests, writes) in the API server's audit log so far, leader election
/// (the Lease, read and renewed every 5 s) left out.
fn audited(cp: &ControlPlane) -> (usize, usize) {
    let mut requests = cp.audited_requests();
    requests.retain(|r| r.resource != "leases");
    let writes = requests.iter().filter(|r| r.is_write()).count();
    (requests.len(), writes)
}

fn minus(a: (usize, usize), b: (usize, usize)) -> (usize, usize) {
    (a.0 - b.0, a.1 - b.1)
}

fn cluster(i: usize) -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: pg-{i:05}\n  namespace: {NS}\nspec:\n  backup:\n    destinationPath: s3://bench/pg-{i:05}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n    wal: {{compression: gzip, encryption: AES256}}\n"
    )
}

fn kubectl(cp: &ControlPlane, args: &[&str], input: Option<&str>) -> Result<String> {
    cp.kubectl_with_input(args, input)
        .into_result()
        .map_err(|e| anyhow::anyhow!("kubectl {}: {e}", args.join(" ")))
}

/// How many Clusters are converged: `PolicyApplied` True for their current generation.
fn converged(cp: &ControlPlane) -> Result<usize> {
    let out = kubectl(cp, &["get", "clusters", "-n", NS, "-o", "json"], None)?;
    let list: Value = serde_json::from_str(&out)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    Ok(items
        .iter()
        .filter(|c| {
            let applied = c["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["type"] == "PolicyApplied" && x["status"] == "True");
            applied && c["status"]["observedGeneration"] == c["metadata"]["generation"]
        })
        .count())
}

fn counters(op: &Operator) -> (f64, f64) {
    (
        op.metric("pgwarden_reconciles_total", "kind=\"Cluster\""),
        op.metric("pgwarden_api_writes_total", ""),
    )
}

/// Waits until the write counter stays put for `quiet`: the convergence's tail is done.
fn settle(op: &Operator, quiet: Duration, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = counters(op).1;
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        if Instant::now() > deadline {
            bail!("the operator kept writing for {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
        let now = counters(op).1;
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    Ok(())
}

/// A control plane with the CRDs, the operator's RBAC, the agents' admission policy, the
/// bench namespace and its credentials.
fn prepare() -> Result<Isolated> {
    let cp = isolated();
    cp.install_crds()
        .map_err(|e| anyhow::anyhow!("cannot install the CRDs: {e}"))?;
    cp.install_operator_rbac()
        .map_err(|e| anyhow::anyhow!("cannot install the operator's RBAC: {e}"))?;
    cp.install_agent_admission()
        .map_err(|e| anyhow::anyhow!("cannot install the agents' admission policy: {e}"))?;
    kubectl(&cp, &["create", "namespace", NS], None)?;
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: aws-creds\n  namespace: {NS}\nstringData:\n  ACCESS_KEY_ID: bench\n  ACCESS_SECRET_KEY: bench\n"
    );
    kubectl(&cp, &["apply", "-f", "-"], Some(&secret))?;
    Ok(cp)
}

/// Creates `clusters` Clusters and waits until each has converged; returns the seconds taken.
fn converge(cp: &ControlPlane, op: &Operator, clusters: usize) -> Result<f64> {
    let started = Instant::now();
    for chunk in (0..clusters).collect::<Vec<_>>().chunks(100) {
        let yaml: Vec<String> = chunk.iter().map(|i| cluster(*i)).collect();
        kubectl(cp, &["apply", "-f", "-"], Some(&yaml.join("---\n")))?;
    }
    let timeout = Duration::from_secs(120 + clusters as u64);
    loop {
        let done = converged(cp)?;
        if done == clusters {
            return Ok(started.elapsed().as_secs_f64());
        }
        if started.elapsed() > timeout {
            bail!(
                "{done} of {clusters} Clusters converged within {timeout:?}:\n{}",
                op.log_tail(20)
            );
        }
        // Listing every Cluster is itself load on the API server: poll less as N grows
        // (0.5 s up to 250 Clusters, 2 s at 1000).
        std::thread::sleep(Duration::from_millis((clusters as u64 * 2).max(500)));
    }
}

/// The steady state: every Cluster reconciled again (an annotation: no new generation),
/// waiting until `reconciles_before + clusters` reconciles have run.
fn poke_all(
    cp: &ControlPlane,
    op: &Operator,
    clusters: usize,
    reconciles_before: f64,
) -> Result<()> {
    let args = [
        "annotate",
        "clusters",
        "--all",
        "-n",
        NS,
        "--overwrite",
        "pgwarden.bench/poke=1",
    ];
    kubectl(cp, &args, None)?;
    let deadline = Instant::now() + Duration::from_secs(60 + clusters as u64 / 5);
    while counters(op).0 < reconciles_before + clusters as f64 {
        if Instant::now() > deadline {
            bail!(
                "only {} of {clusters} steady-state reconciles ran",
                counters(op).0 - reconciles_before
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn measure(clusters: usize) -> Result<Figures> {
    let cp = prepare()?;
    let op = Operator::try_start(&cp, None).context("cannot start the operator")?;
    eprintln!(
        "operator {} (pid {}) ready; creating {clusters} Clusters",
        binary().display(),
        op.pid()
    );
    let audited_at_start = audited(&cp);
    let seconds_to_steady = converge(&cp, &op, clusters)?;
    eprintln!(
        "{clusters} Clusters converged in {seconds_to_steady:.1}s; waiting for writes to stop"
    );
    let quiet_limit = Duration::from_secs(120 + clusters as u64 / 2);
    settle(&op, Duration::from_secs(5), quiet_limit)?;
    let (r0, w0) = counters(&op);
    let audited_converged = audited(&cp);
    poke_all(&cp, &op, clusters, r0)?;
    settle(&op, Duration::from_secs(3), Duration::from_secs(60))?;
    let (r1, w1) = counters(&op);
    let audited_steady = audited(&cp);
    Ok(Figures {
        converge_audited: minus(audited_converged, audited_at_start),
        steady_audited: minus(audited_steady, audited_converged),
        clusters,
        seconds_to_steady,
        converge_reconciles: r0,
        converge_writes: w0,
        steady_reconciles: r1 - r0,
        steady_writes: w1 - w0,
        peak_rss_mib: op.peak_rss_kib().unwrap_or(0) as f64 / 1024.0,
    })
}

/// Runs the benchmark with `clusters` Clusters.
pub fn reconcile(clusters: usize) -> Result<()> {
    policy("default");
    // Three Services per Cluster; the test control plane's --service-cluster-ip-range is a
    // /16 (tests/src/controlplane.rs).
    if clusters * 3 > 65_000 {
        eprintln!(
            "warning: {clusters} Clusters need {} Services, more than the test control \
             plane's /16 Service range holds",
            clusters * 3
        );
    }
    let f = measure(clusters)?;
    let per = |w: f64, r: f64| if r > 0.0 { w / r } else { 0.0 };
    println!(
        "reconcile benchmark, {} Clusters (operator {})",
        f.clusters,
        binary().display()
    );
    println!(
        "  time to steady state        {:>10.1} s",
        f.seconds_to_steady
    );
    println!(
        "  converging: reconciles      {:>10}   writes {:>8}   writes/reconcile {:.2}",
        f.converge_reconciles,
        f.converge_writes,
        per(f.converge_writes, f.converge_reconciles)
    );
    println!(
        "  steady:     reconciles      {:>10}   writes {:>8}   writes/reconcile {:.2}",
        f.steady_reconciles,
        f.steady_writes,
        per(f.steady_writes, f.steady_reconciles)
    );
    let (cr, cw) = f.converge_audited;
    let (sr, sw) = f.steady_audited;
    println!(
        "  API server audit log (Lease aside):  converging {cr} requests ({:.2}/reconcile), {cw} writes; steady {sr} requests ({:.2}/reconcile), {sw} writes",
        per(cr as f64, f.converge_reconciles),
        per(sr as f64, f.steady_reconciles)
    );
    println!("  operator peak RSS (VmHWM)   {:>10.1} MiB", f.peak_rss_mib);
    let report = json!({
        "clusters": f.clusters,
        "operator": binary().display().to_string(),
        "seconds_to_steady_state": f.seconds_to_steady,
        "converge": {"reconciles": f.converge_reconciles, "writes": f.converge_writes, "writes_per_reconcile": per(f.converge_writes, f.converge_reconciles)},
        "steady": {"reconciles": f.steady_reconciles, "writes": f.steady_writes, "writes_per_reconcile": per(f.steady_writes, f.steady_reconciles)},
        "audit_log": {
            "converge": {"requests": cr, "writes": cw, "requests_per_reconcile": per(cr as f64, f.converge_reconciles)},
            "steady": {"requests": sr, "writes": sw, "requests_per_reconcile": per(sr as f64, f.steady_reconciles)},
        },
        "reads": "the operator reads its reflector caches (one watch per kind); the audit log counts every request it made",
        "operator_peak_rss_mib": f.peak_rss_mib,
    });
    let out = paths::root().join("target/bench");
    std::fs::create_dir_all(&out)?;
    let file = out.join("reconcile.json");
    std::fs::write(&file, serde_json::to_string_pretty(&report)? + "\n")?;
    println!("figures in {}", file.display());
    Ok(())
}
