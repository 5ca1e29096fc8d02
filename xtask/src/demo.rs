//! `cargo xtask demo [--once]`: the seed scenario on one machine.
//!
//! ```text
//!   setup ─► control plane ─► S3 server (MinIO) + bucket + generated key ─► local node
//!         ─► CRDs ─► pgwarden operator ─► seed manifests (Secret, Cluster, Backup)
//!         ─► wait: instance Ready · WAL archived · Backup completed ─► kubectl describe
//!         ─► ScheduledBackup "* * * * *": its first Backup completes
//!         ─► examples/local/recovery.yaml: a Cluster restored from the Backup, rows checked
//! ```
//!
//! Without `--once` the control plane is the sandbox's (`.state/sandbox`, fixed ports) and the
//! demo stays in the foreground, serving the pods, until Ctrl-C. It starts clean: it says
//! what the sandbox already holds (an earlier demo's objects, anything made by hand) and
//! clears it first, as `cargo xtask sandbox reset` does (see `clean`). `--once` uses a control
//! plane of its own, tears everything down and exits 0 only if every step succeeded.
//! The harness reads its programs' paths from the environment set-up produces, so the demo
//! runs itself again as a child process with that environment.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{
    Bins, agent_admission_manifest, isolated, operator_rbac_manifest,
};
use pgwarden_tests::datapath::{S3Server, free_port};
use pgwarden_tests::localnode::{HostPrograms, LocalNode, Options};

use crate::paths;

mod clean;
mod plane;
mod steps;

pub use clean::{remove_when_unused, state, stop_serving};

use plane::{Plane, step};
use steps::{BUCKET, recovery, scenario, scheduled};

const CHILD_ENV: &str = "PGWARDEN_DEMO_CHILD";

/// Sets up, then runs the demo in a child process with the set-up's environment.
pub fn run(once: bool) -> Result<()> {
    if std::env::var_os(CHILD_ENV).is_some() {
        return demo(once);
    }
    let started = Instant::now();
    let prepared = crate::test::setup(crate::test::Binary::Build)?;
    // This very binary, even if a concurrent cargo build replaced the file during the set-up
    // (current_exe() would then name a deleted file).
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(exe);
    cmd.arg("demo").env(CHILD_ENV, "1").envs(prepared.env);
    if once {
        cmd.arg("--once");
    }
    let status = cmd.status().context("cannot run the demo")?;
    println!("demo: wall time {:.0?}", started.elapsed());
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}

/// The CRDs, the operator's RBAC and the agents' admission policy, as deployed.
fn install(plane: &Plane) -> Result<String> {
    let crds = paths::root().join("crds/yaml").display().to_string();
    plane.kubectl(&["apply", "-f", &crds], None)?;
    let established = [
        "wait",
        "--for=condition=established",
        "crd",
        "--all",
        "--timeout=60s",
    ];
    plane.kubectl(&established, None)?;
    // The operator runs with the rights a deployed one has (deploy/operator.yaml).
    let rbac = operator_rbac_manifest().map_err(anyhow::Error::msg)?;
    plane.kubectl(&["apply", "-f", "-"], Some(&rbac))?;
    // The agents are held to their own Cluster's statuses, as deployed.
    let admission = agent_admission_manifest().map_err(anyhow::Error::msg)?;
    plane.kubectl(&["apply", "-f", "-"], Some(&admission))
}

fn demo(once: bool) -> Result<()> {
    let state = state();
    let plane = step("control plane", || start_plane(once))?;
    let s3 = step(
        "S3 server (MinIO) with a bucket and a generated key",
        || {
            let s3 = S3Server::start();
            s3.create_bucket(BUCKET);
            Ok(s3)
        },
    )?;
    let node = step("local node (a stand-in for a kubelet)", || {
        start_node(&plane, &state.join("node"))
    })?;
    step("CRDs and the operator's RBAC", || install(&plane))?;
    let operator = step("pgwarden operator", || Operator::start(&plane, &state))?;
    let result = scenario(&plane, &s3)
        .and_then(|()| scheduled(&plane))
        .and_then(|()| recovery(&plane, &s3));
    if let Err(e) = &result {
        println!("demo: FAILED: {e:#}");
        println!("demo: operator log tail:\n{}", tail(&operator.log, 30));
    }
    if once {
        drop(operator);
        drop(node);
        drop(s3);
        drop(plane);
        println!("demo: torn down");
        return result;
    }
    result?;
    println!(
        "\nThe sandbox is running. In another terminal:\n  \
         export KUBECONFIG={}\n  \
         {} get clusters,backups,pods\n\
         Stop the demo with Ctrl-C (stops the node, the operator and the S3 server); \
         the control plane keeps running until `cargo xtask sandbox down`, and \
         `cargo xtask sandbox reset` stops everything and deletes every object.",
        plane.kubeconfig.display(),
        plane.kubectl.display()
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
        if !node.is_running() {
            bail!("the local node stopped");
        }
    }
}

fn start_plane(once: bool) -> Result<Plane> {
    if once {
        let cp = isolated();
        return Ok(Plane {
            kubectl: cp.bins.kubectl.clone(),
            kubeconfig: cp.kubeconfig.clone(),
            operator_kubeconfig: cp.operator_kubeconfig(),
            _own: Some(cp),
        });
    }
    crate::sandbox::run(crate::sandbox::Action::Up)?;
    let plane = Plane {
        kubectl: Bins::cached().kubectl,
        kubeconfig: paths::state().join("sandbox/admin.kubeconfig"),
        operator_kubeconfig: paths::state().join("sandbox/operator.kubeconfig"),
        _own: None,
    };
    clean::start_clean(&plane)?;
    clean::record_serving()?;
    Ok(plane)
}

/// The node starts without pods: on a clean control plane the data of earlier ones is stale.
fn start_node(plane: &Plane, dir: &Path) -> Result<LocalNode> {
    let _ = std::fs::remove_dir_all(dir);
    let var = |name: &str| PathBuf::from(std::env::var(name).unwrap_or_default());
    let programs = HostPrograms {
        pgwarden: var("PGWARDEN_BIN"),
        pg_bin: var("PGWARDEN_PG_BIN"),
        barman_bin: var("PGWARDEN_BARMAN_BIN"),
    };
    // The store's region: the S3 server signs for it.
    let opts = Options::for_instances(&plane.kubeconfig, dir, &programs, "us-east-1");
    LocalNode::start(opts)
}

/// `pgwarden operator`, in its own process group, stopped when dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(plane: &Plane, state: &Path) -> Result<Operator> {
        std::fs::create_dir_all(state)?;
        let log = state.join("operator.log");
        let out = std::fs::File::create(&log)?;
        let pgwarden = std::env::var("PGWARDEN_BIN").context("PGWARDEN_BIN")?;
        let policy = paths::root().join("target/policies/default.wasm");
        let child = Command::new(pgwarden)
            .args(["operator", "--default-policy"])
            .arg(&policy)
            .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
            // Compiled modules are cached: a debug build compiles one in about half a minute.
            .arg("--policy-cache")
            .arg(paths::cache().join("policy-modules"))
            .env("KUBECONFIG", &plane.operator_kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("cannot start the operator")?;
        let _ = pgwarden_tests::watchdog::guard_group(child.id());
        Ok(Operator { child, log })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
        let _ = self.child.wait();
    }
}

use std::os::unix::process::CommandExt;

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
