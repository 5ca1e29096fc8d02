//! The operator as the demo runs it: installed from `deploy/` (`kubectl apply -f crds/yaml/ -f
//! deploy/`), its pods run by the local node from `pgwarden-operator:<version>`; ready once a
//! Ready pod holds the Lease.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;

use super::plane::Plane;
use crate::paths;

/// deploy/operator.yaml's namespace, Lease and pod label.
const SYSTEM: &str = "pgwarden-system";
const LEASE: &str = "pgwarden-operator";
const SELECTOR: &str = "app=pgwarden-operator";
/// Two debug operators compile the default policy at once on a busy machine.
const WAIT: Duration = Duration::from_secs(300);

/// `kubectl apply -f crds/yaml/ -f deploy/` (the install the README gives), then waits for
/// the CRDs to be Established.
pub fn install(plane: &Plane) -> Result<String> {
    let root = paths::root();
    let crds = root.join("crds/yaml").display().to_string();
    let deploy = root.join("deploy").display().to_string();
    let applied = plane.kubectl(&["apply", "-f", &crds, "-f", &deploy], None)?;
    let established = [
        "wait",
        "--for=condition=established",
        "crd",
        "--all",
        "--timeout=60s",
    ];
    plane.kubectl(&established, None)?;
    Ok(applied)
}

/// The operator's pods.
fn pods(plane: &Plane) -> Vec<Value> {
    let pods = plane.json(&["get", "pods", "-n", SYSTEM, "-l", SELECTOR]);
    pods.and_then(|p| p["items"].as_array().cloned())
        .unwrap_or_default()
}

fn is_ready(pod: &Value) -> bool {
    (pod["status"]["conditions"].as_array().into_iter().flatten())
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The Lease's holder: the leading pod's name.
fn holder(plane: &Plane) -> Option<String> {
    let lease = plane.json(&["get", "lease", "-n", SYSTEM, LEASE])?;
    let holder = lease["spec"]["holderIdentity"].as_str()?;
    Some(holder.to_string()).filter(|h| !h.is_empty())
}

/// One line on the operator's pods: name, phase, readiness, image, restarts.
fn pods_line(pods: &[Value]) -> String {
    let line = |p: &Value| {
        format!(
            "{} {} {} ({}, restarts {})",
            p["metadata"]["name"].as_str().unwrap_or("?"),
            p["status"]["phase"].as_str().unwrap_or("?"),
            if is_ready(p) { "ready" } else { "not-ready" },
            p["spec"]["containers"][0]["image"].as_str().unwrap_or("?"),
            p["status"]["containerStatuses"][0]["restartCount"]
        )
    };
    pods.iter().map(line).collect::<Vec<_>>().join(", ")
}

/// Waits until a Ready operator pod holds the Lease, printing each change; its name.
pub fn wait_leader(plane: &Plane) -> Result<String> {
    let (start, mut last) = (Instant::now(), String::new());
    while start.elapsed() < WAIT {
        let pods = pods(plane);
        let holder = holder(plane);
        let line = format!(
            "operator pods: {} | lease holder: {holder:?}",
            pods_line(&pods)
        );
        if line != last {
            println!("demo: [{:>4.0?}] {line}", start.elapsed());
            last = line;
        }
        let leads = |p: &&Value| holder.as_deref() == p["metadata"]["name"].as_str();
        if pods.iter().find(leads).is_some_and(is_ready) {
            return Ok(holder.unwrap_or_default());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    bail!("no operator pod led within {WAIT:?}: {last}")
}

/// The last `n` lines of every operator pod's log (`kubectl logs`, through the local node).
pub fn log_tail(plane: &Plane, n: usize) -> String {
    let tail = format!("--tail={n}");
    let args = ["logs", "-n", SYSTEM, "-l", SELECTOR, "--prefix", &tail];
    plane
        .kubectl(&args, None)
        .unwrap_or_else(|e| format!("{e:#}"))
}
