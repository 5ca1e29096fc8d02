//! The demo on the sandbox starts clean: the sandbox keeps its objects between runs (an
//! earlier demo stopped with Ctrl-C, objects made by hand or by other tools), and they would
//! keep reconciling beside the scenario. The demo says what it found, then resets the sandbox
//! (`cargo xtask sandbox reset`: the demo serving on it stopped by PID, etcd's data deleted).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{runs, stop_pids};

use super::plane::Plane;
use crate::paths;

/// The demo's state: the operator's log, the local node's pods, the serving demo's PID.
pub fn state() -> PathBuf {
    paths::state().join("demo")
}

fn pid_file() -> PathBuf {
    state().join("pid")
}

/// Records this process as the demo serving on the sandbox (`pid exe`), for `reset`.
pub fn record_serving() -> Result<()> {
    std::fs::create_dir_all(state())?;
    let exe = std::fs::read_link("/proc/self/exe").context("cannot read /proc/self/exe")?;
    let line = format!("{} {}\n", std::process::id(), exe.display());
    std::fs::write(pid_file(), line).context("cannot write the demo's PID file")
}

/// The recorded demo, if it still runs and is not this process.
fn serving() -> Option<u32> {
    let text = std::fs::read_to_string(pid_file()).ok()?;
    let (pid, exe) = text.trim().split_once(' ')?;
    let pid: u32 = pid.parse().ok()?;
    (pid != std::process::id() && runs(pid, Path::new(exe))).then_some(pid)
}

/// Stops the demo serving on the sandbox, if one does; returns its PID. Its node, operator
/// and S3 server follow it: each has a watchdog that stops its process group.
pub fn stop_serving() -> Result<Option<u32>> {
    let Some(pid) = serving() else {
        return Ok(None);
    };
    stop_pids(&[pid], Duration::from_secs(15));
    if serving().is_some() {
        bail!("the demo serving on the sandbox (pid {pid}) did not stop");
    }
    Ok(Some(pid))
}

/// Removes `dir` once no process names it on its command line (a pod's postgres, etcd),
/// waiting up to 30 s for the watchdogs to stop them.
pub fn remove_when_unused(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let users = users_of(dir);
        if users.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("processes {users:?} still use {}", dir.display());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))
}

/// The processes whose command line names `dir`.
fn users_of(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    procs
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

/// The namespaces every control plane has.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// What a run leaves behind, and what other tools may have made: pgwarden's objects, pods.
const KINDS: [(&str, &str); 5] = [
    ("clusters.postgresql.k8s.2ndq.io", "cluster"),
    ("backups.postgresql.k8s.2ndq.io", "backup"),
    ("scheduledbackups.postgresql.k8s.2ndq.io", "scheduledbackup"),
    (
        "reconcilepolicies.postgresql.k8s.2ndq.io",
        "reconcilepolicy",
    ),
    ("pods", "pod"),
];

/// What the sandbox already holds beyond an empty control plane, one `kind ns/name` each.
pub fn leftovers(plane: &Plane) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(pid) = serving() {
        found.push(format!("a demo serving on it (pid {pid})"));
    }
    let items = |args: &[&str]| {
        let list = plane.json(args).unwrap_or_default();
        list["items"].as_array().cloned().unwrap_or_default()
    };
    for ns in items(&["get", "namespaces"]) {
        let name = ns["metadata"]["name"].as_str().unwrap_or_default();
        if !SYSTEM_NAMESPACES.contains(&name) {
            found.push(format!("namespace {name}"));
        }
    }
    // A kind whose CRD is not installed yet lists nothing.
    for (resource, kind) in KINDS {
        for item in items(&["get", resource, "--all-namespaces"]) {
            let meta = &item["metadata"];
            let ns = meta["namespace"].as_str().unwrap_or_default();
            let name = meta["name"].as_str().unwrap_or_default();
            found.push(format!("{kind} {ns}/{name}"));
        }
    }
    found
}

/// Says what the sandbox already holds and, if anything, resets it and starts it again.
pub fn start_clean(plane: &Plane) -> Result<()> {
    let found = leftovers(plane);
    if found.is_empty() {
        println!("demo: the sandbox is empty");
        return Ok(());
    }
    const SHOWN: usize = 20;
    let more = found.len().saturating_sub(SHOWN);
    let mut list = found[..found.len().min(SHOWN)].join(", ");
    if more > 0 {
        list.push_str(&format!(" and {more} more"));
    }
    println!(
        "demo: the sandbox already holds {} (from an earlier run or another tool): {list}",
        found.len()
    );
    println!("demo: clearing it (`cargo xtask sandbox reset`) so that the scenario starts clean");
    crate::sandbox::reset()?;
    crate::sandbox::run(crate::sandbox::Action::Up)
}
