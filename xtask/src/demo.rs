//! `cargo xtask demo [--once]`: the seed scenario on one machine.
//!
//! ```text
//!   setup + images ─► control plane ─► S3 server (MinIO) + bucket + generated key
//!         ─► local node (the images with runc) ─► kubectl apply -f crds/yaml/ -f deploy/
//!         ─► the operator's pods: one leads ─► seed manifests (Secret, Cluster, Backup)
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
//! The operator is installed from `deploy/` as a user installs it and runs in the sandbox as
//! its Deployment's pods, from the operator image (`cargo xtask image`, or the OCI layouts
//! `$PGWARDEN_OPERATOR_IMAGE` and `$PGWARDEN_INSTANCE_IMAGE` name); instance pods run from the
//! instance image (`$PGWARDEN_INSTANCE_PODS=host`: from the host's binaries).
//! The harness reads its programs' paths from the environment set-up produces, so the demo
//! runs itself again as a child process with that environment.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pgwarden_tests::controlplane::{Bins, isolated};
use pgwarden_tests::datapath::S3Server;
use pgwarden_tests::localnode::{HostPrograms, LocalNode, Options};
use pgwarden_tests::world::INSTANCE_PODS_ENV;

use crate::image::{INSTANCE, OPERATOR, VERSION};
use crate::paths;

mod clean;
mod operator;
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
    let env = prepared_env()?;
    // This very binary, even if a concurrent cargo build replaced the file during the set-up
    // (current_exe() would then name a deleted file).
    let exe = Path::new("/proc/self/exe");
    let exe = if exe.exists() {
        exe.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    let mut cmd = Command::new(exe);
    cmd.arg("demo").env(CHILD_ENV, "1").envs(env);
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

/// What the set-up and `cargo xtask image` give the tests; the demo's child reads them.
const PREPARED: [&str; 7] = [
    "PGWARDEN_BIN",
    "PGWARDEN_PG_BIN",
    "PGWARDEN_BARMAN_BIN",
    "PGWARDEN_S3_SERVER",
    "PGWARDEN_POLICY_DIR",
    "PGWARDEN_INSTANCE_IMAGE",
    "PGWARDEN_OPERATOR_IMAGE",
];

/// The set-up's environment and the images'. When this process's environment already names
/// all of them (the test suite's, whose set-up and images are done), the child inherits it
/// and nothing is built: the suite's `target/` stays as the suite built it.
fn prepared_env() -> Result<Vec<(&'static str, PathBuf)>> {
    let given = PREPARED
        .iter()
        .all(|var| std::env::var_os(var).is_some_and(|p| Path::new(&p).exists()));
    if given {
        println!("demo: set-up and images as the environment names them ($PGWARDEN_*)");
        return Ok(Vec::new());
    }
    let mut env = crate::test::setup(crate::test::Binary::Build)?.env;
    let images = images(&env)?;
    env.extend(images);
    Ok(env)
}

/// The variables naming the images' OCI layouts (tag: the version): the ones already set,
/// else `cargo xtask image`'s for the set-up's binary and policy modules (cached: fast when
/// unchanged).
fn images(env: &[(&str, PathBuf)]) -> Result<Vec<(&'static str, PathBuf)>> {
    let given: Vec<(&'static str, PathBuf)> = PREPARED[5..]
        .iter()
        .filter_map(|var| Some((*var, PathBuf::from(std::env::var_os(var)?))))
        .filter(|(_, layout)| layout.join("index.json").is_file())
        .collect();
    if given.len() == 2 {
        return Ok(given);
    }
    Ok(crate::image::for_tests(env)?.env())
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
    let node = step(
        "local node (a stand-in for a kubelet: the operator's pods from its image, with runc)",
        || start_node(&plane, &state.join("node")),
    )?;
    step(
        "CRDs and the operator: kubectl apply -f crds/yaml/ -f deploy/",
        || operator::install(&plane),
    )?;
    let result = step(
        "pgwarden operator (deploy/operator.yaml's pods; one leads through the Lease)",
        || operator::wait_leader(&plane),
    )
    .map(|leader| println!("demo: pgwarden-system/{leader} leads"))
    .and_then(|()| scenario(&plane, &s3))
    .and_then(|()| scheduled(&plane))
    .and_then(|()| recovery(&plane, &s3));
    if let Err(e) = &result {
        println!("demo: FAILED: {e:#}");
        println!(
            "demo: operator log tail:\n{}",
            operator::log_tail(&plane, 30)
        );
        let instance = plane.kubectl(&["logs", "postgresql-bkp-1", "--tail=20"], None);
        println!(
            "demo: postgresql-bkp-1 log tail:\n{}",
            instance.unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    if once {
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
            _own: Some(cp),
        });
    }
    crate::sandbox::run(crate::sandbox::Action::Up)?;
    let plane = Plane {
        kubectl: Bins::cached().kubectl,
        kubeconfig: paths::state().join("sandbox/admin.kubeconfig"),
        _own: None,
    };
    clean::start_clean(&plane)?;
    clean::record_serving()?;
    Ok(plane)
}

/// The node starts without pods: on a clean control plane the data of earlier ones is stale.
/// It runs the operator image (the reference deploy/ names) and instance pods from the
/// instance image, as the end-to-end tests do; `$PGWARDEN_INSTANCE_PODS=host` runs instance
/// pods from the host's binaries instead (tests/src/world.rs).
fn start_node(plane: &Plane, dir: &Path) -> Result<LocalNode> {
    let _ = std::fs::remove_dir_all(dir);
    let var = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .with_context(|| format!("${name} is not set"))
    };
    let operator = (
        format!("{OPERATOR}:{VERSION}"),
        var("PGWARDEN_OPERATOR_IMAGE")?,
    );
    // The store's region: the S3 server signs for it.
    let region = "us-east-1";
    let from_image = !std::env::var(INSTANCE_PODS_ENV).is_ok_and(|v| v == "host");
    let opts = if from_image {
        let instance = (
            format!("{INSTANCE}:{VERSION}"),
            var("PGWARDEN_INSTANCE_IMAGE")?,
        );
        let images = vec![operator, instance];
        Options::for_instance_images(&plane.kubeconfig, dir, images, region)
    } else {
        let programs = HostPrograms {
            pgwarden: var("PGWARDEN_BIN")?,
            pg_bin: var("PGWARDEN_PG_BIN")?,
            barman_bin: var("PGWARDEN_BARMAN_BIN")?,
        };
        let mut opts = Options::for_instances(&plane.kubeconfig, dir, &programs, region);
        opts.images = vec![operator];
        opts
    };
    println!(
        "demo: instance pods from {} (${INSTANCE_PODS_ENV}={})",
        if from_image {
            "the instance image"
        } else {
            "the host's binaries"
        },
        std::env::var(INSTANCE_PODS_ENV).unwrap_or_default()
    );
    LocalNode::start(opts)
}
