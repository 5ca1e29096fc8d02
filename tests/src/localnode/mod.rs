//! The local node: a **stand-in for a kubelet**, not a kubelet. It lets the whole seed
//! scenario run on one machine, with the real control plane, the real operator and the
//! real instance agent, by running each pod bound to it as local processes.
//!
//! ```text
//!  kube-scheduler ──binds pod──► spec.nodeName = <node>
//!                                     │  (polled every 500 ms)
//!  LocalNode ─┬─ Node + Ready heartbeat (status every 10 s)
//!             ├─ kubelet API: /containerLogs only (HTTPS, 127.0.0.1)
//!             ├─ PersistentVolumes for pending claims (a host folder each)
//!             └─ per pod: 127.<subnet>.x.y ─► volumes as folders ─► env resolved
//!                         ─► containers as process groups ─► probes ─► pods/status
//! ```
//!
//! What it does, and how it differs from a kubelet:
//! - **Images are not pulled.** A container whose `image` is one of [`Options::images`]
//!   (reference → OCI layout, e.g. `pgwarden-instance:<version>` built by `cargo xtask
//!   image`) runs **from that image with runc** (see `runc.rs`: read-only rootfs unpacked
//!   once, the image's user, env and entrypoint, volumes bind-mounted at their `mountPath`,
//!   the host's network and PID namespaces, probes inside, in-cluster configuration). The
//!   rest of this list describes the **host-binary mode** of any other container, unless it
//!   says runc.
//! - Host-binary mode: a container's `command` + `args` run on this host; the
//!   first word is looked up in [`Options::binaries`] (say `pgwarden` → the workspace's
//!   `target/debug/pgwarden`), else found on the container's `PATH`. A container without a
//!   `command` cannot run (the image's entrypoint is unknown): it waits with a reason.
//! - **Env** comes from literal values, `secretKeyRef`, `configMapKeyRef`, `fieldRef`
//!   (`metadata.name`, `metadata.namespace`, `metadata.uid`, `spec.nodeName`,
//!   `status.podIP`) and `envFrom`, then [`Options::env`] is added (with `{podIP}` and
//!   `{podDir}` replaced), e.g. `KUBECONFIG`, `PATH`, or where postgres listens.
//! - **Volumes are folders** under [`Options::state_dir`]: a claim is
//!   `volumes/<namespace>/<claim>` and survives pod restarts and deletion; an `emptyDir`
//!   lives and dies with its pod; ConfigMap, Secret and projected volumes are written as
//!   files and rewritten when the object changes.
//! - **Service accounts**: a projected `serviceAccountToken` (what admission mounts at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`) is a real token of the pod's
//!   ServiceAccount from the TokenRequest API, bound to the pod and renewed at 80% of its
//!   lifetime. runc mounts it at its path and sets `KUBERNETES_SERVICE_HOST`/`_PORT`
//!   (in-cluster configuration, no kubeconfig). In host-binary mode that path cannot exist:
//!   each such pod gets `<podDir>/kubeconfig`
//!   (server, CA, `tokenFile`) as `KUBECONFIG`, unless its env or [`Options::env`] sets one:
//!   the pod acts with its ServiceAccount's rights, as in a cluster.
//! - **Container paths are rewritten** (host-binary mode): there is no mount namespace, so
//!   any env value,
//!   argument or probe command word equal to a `mountPath` or under it is replaced by the
//!   host folder (`/var/lib/postgresql/data/pgdata` → `<state>/volumes/ns/claim/pgdata`).
//! - **Networking is loopback**: each pod gets its own address `127.<subnet>.x.y`, reported
//!   as `status.podIP`; containers must listen on it (pass `{podIP}` through
//!   [`Options::env`]). Each pod also gets a `run/` folder anyone may write (sockets).
//! - **Logs**: it serves the kubelet's `/containerLogs` over HTTPS on a port of 127.0.0.1
//!   (the Node's `daemonEndpoints`), so `kubectl logs` works through the API server. No
//!   other kubelet API: `kubectl exec`, `attach` and `port-forward` do not.
//! - Claims are provisioned as `PersistentVolume`s with a `claimRef` (the controller-manager
//!   binds them), so pods with claims are schedulable.
//! - Host-binary processes run as this process's user (runc: the image's or `runAsUser`),
//!   each container in its own process group; the
//!   node stops every group it started when it stops, is dropped (also while unwinding from
//!   a panic), or when this process dies (a watchdog shell per group).
//! - **Probes**: readiness and liveness (exec, TCP, HTTP; under runc, exec inside). A container
//!   whose processes are all stopped (SIGSTOP) is not liveness-probed: the tests freeze a whole
//!   container to stand for a hung node, whose kubelet would restart nothing.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Node, PersistentVolume, PersistentVolumeClaim, Pod, Probe,
    Secret, ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

mod containers;
mod kubelet;
mod node;
mod pods;
mod runc;
mod util;

use node::*;
use pods::*;
use util::*;

/// How a local node runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The Node's name.
    pub name: String,
    /// The kubeconfig the node talks to the API server with.
    pub kubeconfig: PathBuf,
    /// Pod folders and volume folders live here (must be traversable by every user the
    /// containers switch to, e.g. `postgres`: it is created `0755`).
    pub state_dir: PathBuf,
    /// Command names resolved to host binaries (`pgwarden` → `target/debug/pgwarden`).
    pub binaries: Vec<(String, PathBuf)>,
    /// Added to every container's env, after its own; `{podIP}` and `{podDir}` are
    /// replaced by the pod's address and folder.
    pub env: Vec<(String, String)>,
    /// Pod addresses are `127.<subnet>.x.y`.
    pub subnet: u8,
    /// Images the node runs with runc: reference (`pgwarden-instance:0.1.0`) → OCI layout.
    /// A container naming one of them runs from it; any other runs its `command` on the host.
    pub images: Vec<(String, PathBuf)>,
}

/// The host's programs an instance pod runs in host-binary mode.
#[derive(Clone, Debug)]
pub struct HostPrograms {
    /// Resolves the containers' and probes' `pgwarden`.
    pub pgwarden: PathBuf,
    /// PostgreSQL's `bin` folder.
    pub pg_bin: PathBuf,
    /// The barman cloud tools' folder.
    pub barman_bin: PathBuf,
}

impl Options {
    /// A node for instance pods: `pgwarden` is `programs.pgwarden`, PostgreSQL and barman are
    /// on the PATH, the store's region is `region`, and each pod listens on its own address
    /// with its socket in its own folder (a socket path must stay under 108 bytes: keep
    /// `state_dir` short).
    pub fn for_instances(
        kubeconfig: &Path,
        state_dir: &Path,
        programs: &HostPrograms,
        region: &str,
    ) -> Self {
        let (pg, barman) = (programs.pg_bin.display(), programs.barman_bin.display());
        let env = [
            (
                "PATH",
                format!("{pg}:{barman}:/usr/local/bin:/usr/bin:/bin"),
            ),
            ("PGWARDEN_PG_BIN", pg.to_string()),
            ("PGWARDEN_BARMAN_BIN", barman.to_string()),
            ("AWS_DEFAULT_REGION", region.to_string()),
            ("PGWARDEN_LISTEN_ADDRESSES", "{podIP}".into()),
            ("PGWARDEN_SOCKET_DIR", "{podDir}/run".into()),
            // For psql run inside the pod.
            ("PGHOST", "{podDir}/run".into()),
        ];
        Self {
            binaries: vec![("pgwarden".into(), programs.pgwarden.clone())],
            env: env.map(|(k, v)| (k.to_string(), v)).into(),
            ..Self::new(kubeconfig, state_dir)
        }
    }

    /// A node running instance pods from their image (`images`: reference → OCI layout), as
    /// in a cluster: the image's PostgreSQL, barman and `pgwarden`. Only what a cluster's
    /// network would give differently is added: each pod listens on its own address (the
    /// host's network is shared), the store's region, and a variable naming the pod's folder
    /// on this host (how the tests tell the pods' processes apart, see `world::agent_pids`).
    pub fn for_instance_images(
        kubeconfig: &Path,
        state_dir: &Path,
        images: Vec<(String, PathBuf)>,
        region: &str,
    ) -> Self {
        let env = [
            ("AWS_DEFAULT_REGION", region.to_string()),
            ("PGWARDEN_LISTEN_ADDRESSES", "{podIP}".into()),
            // PostgreSQL's socket is in /tmp, the pod's `run/` folder: psql inside finds it.
            ("PGHOST", "/tmp".into()),
            ("PGWARDEN_LOCALNODE_POD_DIR", "{podDir}".into()),
        ];
        Self {
            images,
            env: env.map(|(k, v)| (k.to_string(), v)).into(),
            ..Self::new(kubeconfig, state_dir)
        }
    }

    /// Defaults: `pgwarden-local`, subnet 20, no extra env, no images.
    pub fn new(kubeconfig: &Path, state_dir: &Path) -> Self {
        Self {
            name: "pgwarden-local".into(),
            kubeconfig: kubeconfig.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            binaries: Vec::new(),
            env: Vec::new(),
            subnet: 20,
            images: Vec::new(),
        }
    }
}

/// A running local node; stops every process it started when stopped or dropped.
pub struct LocalNode {
    pub name: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl LocalNode {
    /// Registers the Node and starts running the pods bound to it (in a thread of its own).
    pub fn start(opts: Options) -> Result<LocalNode> {
        std::fs::create_dir_all(&opts.state_dir)?;
        chmod(&opts.state_dir, 0o755)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let name = opts.name.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("localnode-{name}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(run(opts, flag, ready_tx))
            })?;
        let mut node = LocalNode {
            name,
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(node),
            Ok(Err(e)) => {
                node.stop();
                Err(anyhow!("local node did not register: {e}"))
            }
            Err(_) => {
                let e = node.stop_and_join();
                Err(anyhow!("local node did not register: {e:?}"))
            }
        }
    }

    /// Stops every pod's processes (TERM, then KILL after 10 s) and the node's loop.
    pub fn stop(&mut self) {
        let _ = self.stop_and_join();
    }

    fn stop_and_join(&mut self) -> Option<String> {
        self.stop.store(true, Ordering::SeqCst);
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("the local node's thread panicked".into()),
        }
    }

    /// Whether the node's loop still runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(super) const TICK: Duration = Duration::from_millis(500);
pub(super) const HEARTBEAT: Duration = Duration::from_secs(10);
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);
pub(super) const FIELD_MANAGER: &str = "pgwarden-localnode";
/// Where admission mounts a pod's service-account token, CA and namespace.
pub(super) const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

async fn run(
    opts: Options,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<()> {
    let setup = async {
        let client = client(&opts.kubeconfig).await?;
        let kubelet = kubelet::KubeletServer::bind().await?;
        register(&client, &opts.name, kubelet.port).await?;
        anyhow::Ok((client, kubelet))
    };
    let (client, kubelet) = match setup.await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let kubelet_port = kubelet.port;
    tokio::spawn(kubelet.serve(client.clone(), opts.state_dir.clone(), stop.clone()));
    let mut node = NodeLoop {
        client,
        kubelet_port,
        opts,
        pods: Pods::default(),
        next_ip: 0,
        last_heartbeat: Instant::now(),
    };
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = node.tick().await {
            eprintln!("localnode: {e:#}");
        }
        tokio::time::sleep(TICK).await;
    }
    node.pods.stop_all();
    Ok(())
}

/// Runs `sql` with psql (from `pg_bin`) as `postgres` on the unix socket of the pod `uid` of
/// the local node keeping its state in `state_dir` (the pod's `run/` folder: each pod's
/// postgres listens there); the trimmed output, or `None` if psql failed.
pub fn pod_psql(state_dir: &Path, uid: &str, pg_bin: &Path, sql: &str) -> Option<String> {
    let socket = state_dir.join("pods").join(uid).join("run");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin.join("psql"))
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&socket)
        .args(["-U", "postgres", "-d", "postgres", "-c", sql])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}
