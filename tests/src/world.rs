//! What the end-to-end tests through the operator share: a local node of its own for one
//! test's namespace.

use std::path::PathBuf;

use crate::controlplane::{ControlPlane, Namespace};
use crate::datapath::{deps, removed_unless_kept, shared_tempdir};
use crate::localnode::{LocalNode, Options};

/// A local node running one namespace's instance pods, and its folder.
pub struct NamespaceNode {
    pub node: LocalNode,
    /// The folder of the node's state (pods, volumes, logs).
    pub state: PathBuf,
    /// Removed when dropped, unless `$PGWARDEN_KEEP_STATE` is set.
    pub dir: Option<tempfile::TempDir>,
}

/// Starts a node named `<tag>-<namespace>` with pod addresses `127.<subnet>.x.y` (tests of one
/// binary run in parallel, each on its own node and subnet) and pins `ns` to it. `env` is added
/// to every container's. The folder is `/tmp/pgw-<tag>-…`: keep `tag` short, PostgreSQL's
/// socket path under the pod's folder must stay under 108 bytes.
pub fn node_for(
    cp: &ControlPlane,
    ns: &Namespace<'_>,
    tag: &str,
    subnet: u8,
    region: &str,
    env: &[(&str, &str)],
) -> NamespaceNode {
    node_running(instance_images(), cp, ns, tag, subnet, region, env)
}

/// [`node_for`], but instance pods always run from the host's binaries: only for a test that
/// says why it cannot run from the images yet.
pub fn host_node_for(
    cp: &ControlPlane,
    ns: &Namespace<'_>,
    tag: &str,
    subnet: u8,
    region: &str,
    env: &[(&str, &str)],
) -> NamespaceNode {
    node_running(None, cp, ns, tag, subnet, region, env)
}

fn node_running(
    images: Option<Vec<(String, PathBuf)>>,
    cp: &ControlPlane,
    ns: &Namespace<'_>,
    tag: &str,
    subnet: u8,
    region: &str,
    env: &[(&str, &str)],
) -> NamespaceNode {
    let dir = shared_tempdir(&format!("pgw-{tag}-"));
    let state = dir.path().to_path_buf();
    let node_dir = state.join("node");
    let mut opts = match images {
        Some(images) => Options::for_instance_images(&cp.kubeconfig, &node_dir, images, region),
        None => Options::for_instances(&cp.kubeconfig, &node_dir, &deps().host_programs(), region),
    };
    opts.name = format!("{tag}-{}", ns.name);
    opts.subnet = subnet;
    opts.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    ns.pin_to_node(&opts.name)
        .expect("pin the namespace to its node");
    let node = LocalNode::start(opts).expect("local node");
    NamespaceNode {
        node,
        state,
        dir: removed_unless_kept(dir),
    }
}

/// `$PGWARDEN_INSTANCE_PODS`: instance pods run from the project's images with runc (the OCI
/// layouts `$PGWARDEN_INSTANCE_IMAGE` and `$PGWARDEN_OPERATOR_IMAGE` name, which `cargo xtask
/// test` sets), as a kubelet would, unless it is `host` (or the images are not set): then
/// from the host's binaries, faster to start, for a quick run.
pub const INSTANCE_PODS_ENV: &str = "PGWARDEN_INSTANCE_PODS";

/// The images instance pods run from: see [`INSTANCE_PODS_ENV`].
fn instance_images() -> Option<Vec<(String, PathBuf)>> {
    if std::env::var(INSTANCE_PODS_ENV).is_ok_and(|v| v == "host") {
        return None;
    }
    crate::runc::images_from_env()
}

/// Whether instance pods run from the images (paths inside them are then the container's).
pub fn instance_pods_from_images() -> bool {
    instance_images().is_some()
}

/// The pids of `pgwarden instance run` of pod `pod` in namespace `namespace` on the node whose
/// folder is `<state>/node` (told apart by their environment).
pub fn agent_pids(state: &std::path::Path, namespace: &str, pod: &str) -> Vec<u32> {
    let node_dir = state.join("node").display().to_string();
    let want = [
        format!("POD_NAME={pod}"),
        format!("POD_NAMESPACE={namespace}"),
    ];
    let words = |path: PathBuf| -> Vec<String> {
        std::fs::read(path)
            .unwrap_or_default()
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect()
    };
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let args = words(entry.path().join("cmdline"));
        let agent = args.len() >= 3
            && args[0].ends_with("pgwarden")
            && args[1] == "instance"
            && args[2] == "run";
        if !agent {
            continue;
        }
        let vars = words(entry.path().join("environ"));
        let here = vars.iter().any(|v| v.contains(&node_dir));
        if here && want.iter().all(|w| vars.contains(w)) {
            pids.push(pid);
        }
    }
    pids
}

/// One test's world with a store: an S3 server with a bucket, a local node of its own, a
/// namespace with the store's Secret, and the operator. Tests wrap it to add their own steps.
pub struct StoreWorld<'a> {
    pub ns: Namespace<'a>,
    pub s3: crate::datapath::S3Server,
    pub op: crate::operator::Operator,
    pub node: NamespaceNode,
    /// The node's folder (`node.state`), at hand.
    pub state: PathBuf,
}

/// Starts a [`StoreWorld`] in a namespace named after `hint`, its node tagged `tag` on pod
/// addresses `127.<subnet>.x.y` (see [`node_for`]), archiving to `bucket`.
pub fn store_world(hint: &str, tag: &str, subnet: u8, bucket: &str) -> StoreWorld<'static> {
    store_world_running(instance_images(), hint, tag, subnet, bucket)
}

/// [`store_world`], instance pods from the host's binaries: see [`host_node_for`].
pub fn host_store_world(hint: &str, tag: &str, subnet: u8, bucket: &str) -> StoreWorld<'static> {
    store_world_running(None, hint, tag, subnet, bucket)
}

fn store_world_running(
    images: Option<Vec<(String, PathBuf)>>,
    hint: &str,
    tag: &str,
    subnet: u8,
    bucket: &str,
) -> StoreWorld<'static> {
    let cp: &'static ControlPlane = crate::controlplane::with_crds();
    let ns = cp.namespace(hint);
    let s3 = crate::datapath::S3Server::start();
    s3.create_bucket(bucket);
    let region = &s3.credentials.region;
    let node = node_running(images, cp, &ns, tag, subnet, region, &[]);
    let secret = crate::operator::store_secret_yaml(&s3.credentials);
    crate::operator::apply_when_admitted(&ns, &secret);
    let op = crate::operator::Operator::start(cp, &ns.name);
    let state = node.state.clone();
    StoreWorld {
        ns,
        s3,
        op,
        node,
        state,
    }
}

/// A Cluster of `instances` archiving to `s3://<bucket>/<namespace>` on the world's store,
/// with `extra` (indented YAML under `spec:`, e.g. a `bootstrap`) added.
pub fn store_cluster_yaml(
    w: &StoreWorld<'_>,
    bucket: &str,
    name: &str,
    instances: u32,
    extra: &str,
) -> String {
    format!(
        "apiVersion: postgresql.k8s.2ndq.io/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  instances: {instances}\n{extra}  backup:\n    destinationPath: s3://{bucket}/{ns}\n    endpointURL: {endpoint}\n    s3Credentials:\n      accessKeyId: {{name: aws-creds, key: ACCESS_KEY_ID}}\n      secretAccessKey: {{name: aws-creds, key: ACCESS_SECRET_KEY}}\n",
        ns = w.ns.name,
        endpoint = w.s3.endpoint(),
    )
}

impl StoreWorld<'_> {
    /// Pod `pod` once Ready, or `None` after `timeout`.
    pub fn ready_pod(&self, pod: &str, timeout: std::time::Duration) -> Option<serde_json::Value> {
        crate::datapath::wait_for(timeout, std::time::Duration::from_secs(1), || {
            crate::operator::get(&self.ns, "pod", pod).filter(crate::operator::pod_is_ready)
        })
    }

    /// psql as `postgres` on pod `pod`'s socket (looked up by name now); `None` when it fails.
    pub fn pod_psql(&self, pod: &str, sql: &str) -> Option<String> {
        let p = crate::operator::get(&self.ns, "pod", pod)?;
        let uid = p["metadata"]["uid"].as_str()?;
        crate::localnode::pod_psql(&self.state.join("node"), uid, &deps().pg_bin, sql)
    }

    /// The last `lines` lines of pod `pod`'s container log (its agent and PostgreSQL).
    pub fn pod_log_tail(&self, pod: &str, lines: usize) -> String {
        let Some(p) = crate::operator::get(&self.ns, "pod", pod) else {
            return format!("(no pod {pod})");
        };
        let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
        let log = self
            .state
            .join("node/pods")
            .join(uid)
            .join("logs/postgres.log");
        crate::datapath::log_tail(&log, lines)
    }
}

/// The process group of process `pid`.
fn pgrp(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("its stat");
    // `pid (comm) state ppid pgrp ...`: the fields after the command's closing parenthesis.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    after.split_whitespace().nth(2).expect("pgrp").to_string()
}

/// Sends `signal` to `pod`'s container: its agent's process group and PostgreSQL's (the
/// postmaster calls setsid: a group of its own, its backends in it).
pub fn signal_container(w: &StoreWorld<'_>, pod: &str, signal: &str) {
    let pids = agent_pids(&w.state, &w.ns.name, pod);
    let agent = *pids.first().unwrap_or_else(|| panic!("no agent of {pod}"));
    let claim = std::fs::read_dir(w.state.join("node/volumes").join(&w.ns.name))
        .expect("volumes")
        .flatten()
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{pod}-"))
        })
        .expect("its claim's volume");
    // No PostgreSQL (yet) when the container was just restarted (say by its liveness probe
    // while frozen): then only the agent's group.
    let pid_file = std::fs::read_to_string(claim.path().join("pgdata/postmaster.pid"));
    let postmaster = pid_file
        .ok()
        .and_then(|f| f.lines().next()?.trim().parse::<u32>().ok())
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
    let groups = std::iter::once(pgrp(agent)).chain(postmaster.map(pgrp));
    for group in groups {
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), "--", &format!("-{group}")])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} -{group} ({pod})");
    }
}
