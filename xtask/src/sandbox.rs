//! `cargo xtask sandbox up|down|status|reset`: the local control plane on 127.0.0.1.
//!
//! State (certificates, kubeconfigs, etcd data, logs, PIDs) lives in `.state/sandbox`;
//! the servers outlive the command and are stopped by `down`, by PID. `reset` also stops a
//! demo serving on the sandbox and deletes every object (etcd's data) and the demo's node
//! state, so the next `up` starts empty; the certificates stay, so a KUBECONFIG stays valid.
//! With `$PGWARDEN_STATE_DIR` the sandbox lives there and takes free ports.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{
    Bins, ControlPlane, Layout, Options, Ports, log_tail, run_kubectl, runs, stop_pids,
};

use crate::{controlplane, paths};

#[derive(clap::Subcommand)]
pub enum Action {
    /// Start the control plane (harmless when already up).
    Up,
    /// Stop everything `up` started.
    Down,
    /// Show what is running.
    Status,
    /// Stop the sandbox and a demo serving on it, and delete every object in it (etcd's
    /// data) and the demo's node state: the next `up` or `demo` starts empty.
    Reset,
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up => up(),
        Action::Down => down(),
        Action::Status => status(),
        Action::Reset => reset(),
    }
}

fn layout() -> Layout {
    Layout {
        dir: paths::state().join("sandbox"),
    }
}

/// The components recorded by the last `up`, with whether each still runs.
fn recorded(layout: &Layout, bins: &Bins) -> Vec<(String, u32, bool)> {
    let text = std::fs::read_to_string(layout.pid_file()).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (name, pid) = l.split_once(' ')?;
            let pid: u32 = pid.trim().parse().ok()?;
            Some((name.to_string(), pid, runs(pid, &binary(bins, name))))
        })
        .collect()
}

fn binary(bins: &Bins, name: &str) -> std::path::PathBuf {
    match name {
        "etcd" => bins.etcd.clone(),
        "kube-apiserver" => bins.kube_apiserver.clone(),
        "kube-controller-manager" => bins.kube_controller_manager.clone(),
        "kube-scheduler" => bins.kube_scheduler.clone(),
        _ => bins.kubectl.clone(),
    }
}

fn up() -> Result<()> {
    let bins = controlplane::ensure_built()?;
    let layout = layout();
    let components = recorded(&layout, &bins);
    if !components.is_empty() && components.iter().all(|(_, _, alive)| *alive) {
        println!("sandbox already up");
        return print_access(&layout, &bins);
    }
    // Whatever is left of an earlier run that half died goes first.
    stop_recorded(&layout, &bins);
    let started = Instant::now();
    // A sandbox in a folder of its own (the demo test's) must not take the default one's ports.
    let ports = if std::env::var_os(paths::STATE_DIR_ENV).is_some() {
        Ports::free()?
    } else {
        Ports::SANDBOX
    };
    let opts = Options {
        dir: layout.dir.clone(),
        ports,
        unsafe_no_fsync: false,
        timeout: Duration::from_secs(180),
    };
    let cp = ControlPlane::start(&bins, &opts).context("the sandbox did not start")?;
    cp.write_pid_file()?;
    println!(
        "sandbox up in {:.1}s (logs in {})",
        started.elapsed().as_secs_f64(),
        layout.logs().display()
    );
    print_access(&layout, &bins)
}

fn print_access(layout: &Layout, bins: &Bins) -> Result<()> {
    println!("KUBECONFIG={}", layout.admin_kubeconfig().display());
    println!("kubectl: {}", bins.kubectl.display());
    Ok(())
}

fn down() -> Result<()> {
    let bins = Bins::locate();
    let layout = layout();
    let n = stop_recorded(&layout, &bins);
    println!("sandbox down ({n} processes stopped)");
    Ok(())
}

/// Stops a demo serving on the sandbox and the control plane (by their recorded PIDs), then
/// deletes etcd's data and the demo's node state (the pods' data folders).
pub fn reset() -> Result<()> {
    let demo = crate::demo::stop_serving()?;
    let bins = Bins::locate();
    let layout = layout();
    let n = stop_recorded(&layout, &bins);
    // kubectl's discovery cache would still list the deleted CRDs' kinds.
    let discovery = layout.dir.join("kubectl-cache");
    for dir in [layout.etcd_data(), discovery, crate::demo::state()] {
        crate::demo::remove_when_unused(&dir)?;
    }
    let demo = demo.map_or(String::new(), |pid| format!(", the demo (pid {pid})"));
    println!(
        "sandbox reset: {n} control-plane processes stopped{demo}; every object deleted \
         (etcd data and the demo's node state removed); `cargo xtask sandbox up` or \
         `cargo xtask demo` starts it empty"
    );
    Ok(())
}

/// Stops the recorded components that still run; returns how many.
fn stop_recorded(layout: &Layout, bins: &Bins) -> usize {
    let alive: Vec<u32> = recorded(layout, bins)
        .into_iter()
        .rev()
        .filter(|(_, _, alive)| *alive)
        .map(|(_, pid, _)| pid)
        .collect();
    stop_pids(&alive, Duration::from_secs(15));
    let _ = std::fs::remove_file(layout.pid_file());
    alive.len()
}

fn status() -> Result<()> {
    let bins = Bins::locate();
    let layout = layout();
    let components = recorded(&layout, &bins);
    if components.is_empty() {
        println!("sandbox down");
        return Ok(());
    }
    for (name, pid, alive) in &components {
        let state = if *alive { "running" } else { "NOT RUNNING" };
        println!("{name:<24} pid {pid:<8} {state}");
        if !alive {
            println!("{}", indent(&log_tail(&layout.log(name), 10)));
        }
    }
    let ready = run_kubectl(
        &bins.kubectl,
        &layout.admin_kubeconfig(),
        &["get", "--raw", "/readyz"],
        None,
    );
    if ready.success {
        println!("API server ready");
        print_access(&layout, &bins)
    } else {
        bail!("API server not ready: {}", ready.stderr.trim())
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}
