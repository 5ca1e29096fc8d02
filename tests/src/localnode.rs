//! The local node: a **stand-in for a kubelet**, not a kubelet. It lets the whole seed
//! scenario run on one machine, with the real control plane, the real operator and the
//! real instance agent, by running each pod bound to it as local processes.
//!
//! ```text
//!  kube-scheduler ──binds pod──► spec.nodeName = <node>
//!                                     │  (polled every 500 ms)
//!  LocalNode ─┬─ Node + Ready heartbeat (status every 10 s)
//!             ├─ PersistentVolumes for pending claims (a host folder each)
//!             └─ per pod: 127.<subnet>.x.y ─► volumes as folders ─► env resolved
//!                         ─► containers as process groups ─► probes ─► pods/status
//! ```
//!
//! What it does, and how it differs from a kubelet:
//! - **Images are not pulled.** A container's `command` + `args` run on this host; the
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
//! - **Container paths are rewritten**: there is no mount namespace, so any env value,
//!   argument or probe command word equal to a `mountPath` or under it is replaced by the
//!   host folder (`/var/lib/postgresql/data/pgdata` → `<state>/volumes/ns/claim/pgdata`).
//! - **Networking is loopback**: each pod gets its own address `127.<subnet>.x.y`, reported
//!   as `status.podIP`; containers must listen on it (pass `{podIP}` through
//!   [`Options::env`]). Each pod also gets a `run/` folder anyone may write (sockets).
//! - Claims are provisioned as `PersistentVolume`s with a `claimRef` (the controller-manager
//!   binds them), so pods with claims are schedulable.
//! - Processes run as this process's user, each container in its own process group; the
//!   node stops every group it started when it stops, is dropped (also while unwinding from
//!   a panic), or when this process dies (a watchdog shell per group).

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
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, EnvVar, Node, PersistentVolume, PersistentVolumeClaim, Pod, Probe,
    Secret, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Value, json};

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
}

impl Options {
    /// Defaults: `pgwarden-local`, subnet 20, no extra env.
    pub fn new(kubeconfig: &Path, state_dir: &Path) -> Self {
        Self {
            name: "pgwarden-local".into(),
            kubeconfig: kubeconfig.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            binaries: Vec::new(),
            env: Vec::new(),
            subnet: 20,
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

const TICK: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
const FIELD_MANAGER: &str = "pgwarden-localnode";

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
        register(&client, &opts.name).await?;
        anyhow::Ok(client)
    };
    let client = match setup.await {
        Ok(c) => {
            let _ = ready.send(Ok(()));
            c
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{e:#}")));
            return Err(e);
        }
    };
    let mut node = NodeLoop {
        client,
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

// ---------------------------------------------------------------------------------------
// The Node object.

async fn register(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "pgwarden.dev/local-node": "true"}},
        "spec": {"unschedulable": false},
    });
    nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .context("cannot register the Node")?;
    heartbeat(client, name).await
}

async fn heartbeat(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = now();
    let capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                      {"type": "Hostname", "address": name}],
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "pgwarden local node (a stand-in for a kubelet) is ready",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "local processes", "containerRuntimeVersion": "pgwarden-localnode://0",
            "kubeletVersion": "v1.37.0", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH},
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("cannot report the Node's status")?;
    Ok(())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------------------
// The loop.

struct NodeLoop {
    client: kube::Client,
    opts: Options,
    pods: Pods,
    next_ip: u32,
    last_heartbeat: Instant,
}

impl NodeLoop {
    async fn tick(&mut self) -> Result<()> {
        if self.last_heartbeat.elapsed() >= HEARTBEAT {
            self.last_heartbeat = Instant::now();
            heartbeat(&self.client, &self.opts.name).await?;
        }
        self.provision_claims().await?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default().fields(&format!("spec.nodeName={}", self.opts.name));
        let bound = pods.list(&lp).await?.items;
        let seen: Vec<String> = bound
            .iter()
            .filter_map(|p| p.metadata.uid.clone())
            .collect();
        self.pods.forget_missing(&seen);
        for pod in bound {
            let key = pod_key(&pod);
            if let Err(e) = self.sync_pod(pod).await {
                eprintln!("localnode: pod {key}: {e:#}");
            }
        }
        Ok(())
    }

    async fn sync_pod(&mut self, pod: Pod) -> Result<()> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            return self.finalize(&pod, &uid).await;
        }
        if matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        ) && !self.pods.0.contains_key(&uid)
        {
            return Ok(());
        }
        if !self.pods.0.contains_key(&uid) {
            let ip = self.allocate_ip();
            let dir = self.opts.state_dir.join("pods").join(&uid);
            let rt = PodRuntime::new(&pod, ip, dir)?;
            self.pods.0.insert(uid.clone(), rt);
        }
        let rt = self.pods.0.get_mut(&uid).expect("inserted");
        rt.pod = pod;
        let ctx = Ctx {
            client: &self.client,
            opts: &self.opts,
        };
        rt.sync(&ctx).await?;
        let status = rt.status();
        if rt.last_status.as_ref() != Some(&status) {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &rt.namespace());
            api.patch_status(
                &rt.name(),
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
            .context("cannot report the pod's status")?;
            rt.last_status = Some(status);
        }
        Ok(())
    }

    /// A deleted pod: TERM its processes, KILL them after the grace period, then remove the
    /// pod object (grace 0) as the kubelet does.
    async fn finalize(&mut self, pod: &Pod, uid: &str) -> Result<()> {
        if let Some(rt) = self.pods.0.get_mut(uid) {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .or(pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds))
                .unwrap_or(30)
                .max(0) as u64;
            if !rt.terminate(Duration::from_secs(grace)) {
                return Ok(());
            }
            let rt = self.pods.0.remove(uid).expect("present");
            rt.remove_ephemeral();
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &namespace_of(pod));
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name_of(pod), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn allocate_ip(&mut self) -> String {
        let used: Vec<&str> = self.pods.0.values().map(|p| p.ip.as_str()).collect();
        loop {
            let n = self.next_ip % (250 * 250);
            self.next_ip += 1;
            let ip = format!("127.{}.{}.{}", self.opts.subnet, n / 250, 2 + n % 250);
            if !used.contains(&ip.as_str()) {
                return ip;
            }
        }
    }

    /// Pending claims without a class get a PersistentVolume (a host folder) made for them.
    async fn provision_claims(&self) -> Result<()> {
        let claims: Api<PersistentVolumeClaim> = Api::all(self.client.clone());
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for claim in claims.list(&ListParams::default()).await?.items {
            let spec = claim.spec.clone().unwrap_or_default();
            let pending = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending");
            let classless = spec.storage_class_name.as_deref().unwrap_or("").is_empty();
            if !pending || !classless || spec.volume_name.is_some() {
                continue;
            }
            let uid = claim.metadata.uid.clone().unwrap_or_default();
            let name = format!("pgwarden-local-{uid}");
            if pvs.get_opt(&name).await?.is_some() {
                continue;
            }
            let ns = namespace_of_meta(&claim.metadata);
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            let dir = claim_dir(&self.opts.state_dir, &ns, &claim_name, &uid);
            std::fs::create_dir_all(&dir)?;
            chmod(&dir, 0o755)?;
            let size = spec
                .resources
                .and_then(|r| r.requests)
                .and_then(|r| r.get("storage").map(|q| q.0.clone()))
                .unwrap_or_else(|| "1Gi".into());
            let pv: PersistentVolume = serde_json::from_value(json!({
                "metadata": {"name": name, "labels": {"pgwarden.dev/local-node": self.opts.name}},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": spec.access_modes.unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": "",
                    "hostPath": {"path": dir.display().to_string()},
                    "claimRef": {"namespace": ns, "name": claim_name, "uid": uid,
                                 "kind": "PersistentVolumeClaim", "apiVersion": "v1"},
                },
            }))?;
            match pvs.create(&PostParams::default(), &pv).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e).context("cannot provision a volume"),
            }
        }
        Ok(())
    }
}

struct Ctx<'a> {
    client: &'a kube::Client,
    opts: &'a Options,
}

/// The pods this node runs, by uid; stops every process when dropped (also on panic).
#[derive(Default)]
struct Pods(HashMap<String, PodRuntime>);

impl Pods {
    fn forget_missing(&mut self, seen: &[String]) {
        let gone: Vec<String> = self
            .0
            .keys()
            .filter(|uid| !seen.contains(uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(mut rt) = self.0.remove(&uid) {
                rt.kill_now();
                rt.remove_ephemeral();
            }
        }
    }

    fn stop_all(&mut self) {
        let deadline = Instant::now() + STOP_GRACE;
        for rt in self.0.values_mut() {
            rt.terminate(STOP_GRACE);
        }
        while Instant::now() < deadline && !self.0.values_mut().all(|rt| rt.terminate(STOP_GRACE)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for rt in self.0.values_mut() {
            rt.kill_now();
        }
        self.0.clear();
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        self.stop_all();
    }
}

// ---------------------------------------------------------------------------------------
// One pod.

struct PodRuntime {
    pod: Pod,
    ip: String,
    dir: PathBuf,
    started: String,
    containers: Vec<ContainerRuntime>,
    /// Claim name → its folder (by the claim's uid).
    claims: HashMap<String, PathBuf>,
    last_status: Option<Value>,
    terminating_since: Option<Instant>,
}

#[derive(Default)]
struct ContainerRuntime {
    name: String,
    child: Option<Child>,
    /// RFC 3339 start of the running process.
    started_at: Option<String>,
    restarts: i32,
    /// Exit code, reason, start and end of the last finished run.
    last_exit: Option<(i32, String, String, String)>,
    /// Why it is not running, when it is not.
    waiting: Option<(String, String)>,
    next_start: Option<Instant>,
    ready: bool,
    next_probe: Option<Instant>,
    done: bool,
}

impl PodRuntime {
    fn new(pod: &Pod, ip: String, dir: PathBuf) -> Result<Self> {
        for sub in ["logs", "volumes", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        chmod(&dir, 0o755)?;
        chmod(&dir.join("volumes"), 0o755)?;
        chmod(&dir.join("run"), 0o1777)?;
        let containers = spec_containers(pod)
            .iter()
            .map(|c| ContainerRuntime {
                name: c.name.clone(),
                next_start: Some(Instant::now()),
                ..Default::default()
            })
            .collect();
        Ok(Self {
            pod: pod.clone(),
            ip,
            dir,
            started: now(),
            containers,
            claims: HashMap::new(),
            last_status: None,
            terminating_since: None,
        })
    }

    fn name(&self) -> String {
        name_of(&self.pod)
    }

    fn namespace(&self) -> String {
        namespace_of(&self.pod)
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    async fn sync(&mut self, ctx: &Ctx<'_>) -> Result<()> {
        let volumes = self.sync_volumes(ctx).await?;
        let specs = spec_containers(&self.pod);
        let policy = self.restart_policy();
        for (i, spec) in specs.iter().enumerate() {
            let mounts = mounts(spec, &volumes, |v| self.volume_dir(ctx.opts, v));
            self.containers[i].reap(&policy);
            let c = &self.containers[i];
            let due =
                c.child.is_none() && !c.done && c.next_start.is_some_and(|t| Instant::now() >= t);
            if due {
                let env = self.env_for(ctx, spec, &mounts).await;
                let c = &mut self.containers[i];
                match env {
                    Ok(env) => c.start(spec, env, &mounts, &self.dir, ctx.opts),
                    Err(e) => {
                        c.waiting = Some(("CreateContainerConfigError".into(), format!("{e:#}")));
                        c.next_start = Some(Instant::now() + Duration::from_secs(2));
                    }
                }
            }
            let c = &mut self.containers[i];
            if c.child.is_some() {
                c.probe(spec, &self.ip, &mounts).await;
            } else {
                c.ready = false;
            }
        }
        Ok(())
    }

    /// Makes each volume's folder and writes ConfigMap/Secret files; returns the volumes.
    async fn sync_volumes(&mut self, ctx: &Ctx<'_>) -> Result<Vec<Volume>> {
        let volumes = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .unwrap_or_default();
        let ns = self.namespace();
        for v in &volumes {
            if let Some(c) = &v.persistent_volume_claim
                && !self.claims.contains_key(&c.claim_name)
            {
                let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
                let uid = api
                    .get(&c.claim_name)
                    .await?
                    .metadata
                    .uid
                    .unwrap_or_default();
                let dir = claim_dir(&ctx.opts.state_dir, &ns, &c.claim_name, &uid);
                self.claims.insert(c.claim_name.clone(), dir);
            }
            let dir = self.volume_dir(ctx.opts, v);
            std::fs::create_dir_all(&dir)?;
            if v.persistent_volume_claim.is_none() {
                chmod(&dir, 0o755)?;
            }
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            if let Some(cm) = &v.config_map {
                files.extend(
                    config_map_files(ctx.client, &ns, &cm.name, cm.items.as_deref()).await?,
                );
            }
            if let Some(s) = &v.secret {
                let name = s.secret_name.clone().unwrap_or_default();
                files.extend(secret_files(ctx.client, &ns, &name, s.items.as_deref()).await?);
            }
            if let Some(p) = &v.projected {
                for src in p.sources.iter().flatten() {
                    if let Some(cm) = &src.config_map {
                        files.extend(
                            config_map_files(ctx.client, &ns, &cm.name, cm.items.as_deref())
                                .await?,
                        );
                    }
                    if let Some(s) = &src.secret {
                        files.extend(
                            secret_files(ctx.client, &ns, &s.name, s.items.as_deref()).await?,
                        );
                    }
                    if let Some(t) = &src.service_account_token {
                        files.insert(t.path.clone(), Vec::new());
                    }
                }
            }
            for (path, content) in files {
                write_if_changed(&dir.join(path), &content)?;
            }
        }
        Ok(volumes)
    }

    fn volume_dir(&self, opts: &Options, v: &Volume) -> PathBuf {
        match &v.persistent_volume_claim {
            Some(c) => self.claims.get(&c.claim_name).cloned().unwrap_or_else(|| {
                claim_dir(&opts.state_dir, &self.namespace(), &c.claim_name, "")
            }),
            None => self.dir.join("volumes").join(&v.name),
        }
    }

    async fn env_for(
        &self,
        ctx: &Ctx<'_>,
        spec: &Container,
        mounts: &[(String, PathBuf)],
    ) -> Result<Vec<(String, String)>> {
        let ns = self.namespace();
        let mut env: Vec<(String, String)> = Vec::new();
        for from in spec.env_from.iter().flatten() {
            let prefix = from.prefix.clone().unwrap_or_default();
            if let Some(cm) = &from.config_map_ref {
                let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
                match api.get_opt(&cm.name).await? {
                    Some(o) => env.extend(
                        o.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (format!("{prefix}{k}"), v)),
                    ),
                    None if cm.optional == Some(true) => {}
                    None => return Err(anyhow!("configmap \"{}\" not found", cm.name)),
                }
            }
            if let Some(s) = &from.secret_ref {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
                match api.get_opt(&s.name).await? {
                    Some(o) => env.extend(o.data.unwrap_or_default().into_iter().map(|(k, v)| {
                        (
                            format!("{prefix}{k}"),
                            String::from_utf8_lossy(&v.0).into_owned(),
                        )
                    })),
                    None if s.optional == Some(true) => {}
                    None => return Err(anyhow!("secret \"{}\" not found", s.name)),
                }
            }
        }
        for var in spec.env.iter().flatten() {
            if let Some(value) = self.env_value(ctx, var).await? {
                env.retain(|(k, _)| k != &var.name);
                env.push((var.name.clone(), value));
            }
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .map(|(k, v)| (k, rewrite(&v, mounts)))
            .collect();
        for (k, v) in &ctx.opts.env {
            let v = v
                .replace("{podIP}", &self.ip)
                .replace("{podDir}", &self.dir.display().to_string());
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v));
        }
        Ok(env)
    }

    async fn env_value(&self, ctx: &Ctx<'_>, var: &EnvVar) -> Result<Option<String>> {
        let Some(from) = &var.value_from else {
            return Ok(Some(var.value.clone().unwrap_or_default()));
        };
        let ns = self.namespace();
        if let Some(f) = &from.field_ref {
            let value = match f.field_path.as_str() {
                "metadata.name" => self.name(),
                "metadata.namespace" => ns,
                "metadata.uid" => self.pod.metadata.uid.clone().unwrap_or_default(),
                "spec.nodeName" => ctx.opts.name.clone(),
                "status.podIP" | "status.hostIP" => self.ip.clone(),
                other => {
                    return Err(anyhow!(
                        "fieldRef {other} is not supported by the local node"
                    ));
                }
            };
            return Ok(Some(value));
        }
        if let Some(k) = &from.secret_key_ref {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
            let value = api
                .get_opt(&k.name)
                .await?
                .and_then(|s| s.data)
                .and_then(|d| {
                    d.get(&k.key)
                        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                });
            return match value {
                Some(v) => Ok(Some(v)),
                None if k.optional == Some(true) => Ok(None),
                None => Err(anyhow!(
                    "secret \"{}\" has no key \"{}\" (or is missing)",
                    k.name,
                    k.key
                )),
            };
        }
        if let Some(k) = &from.config_map_key_ref {
            let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
            let value = api
                .get_opt(&k.name)
                .await?
                .and_then(|c| c.data)
                .and_then(|d| d.get(&k.key).cloned());
            return match value {
                Some(v) => Ok(Some(v)),
                None if k.optional == Some(true) => Ok(None),
                None => Err(anyhow!(
                    "configmap \"{}\" has no key \"{}\" (or is missing)",
                    k.name,
                    k.key
                )),
            };
        }
        Err(anyhow!("env {}: unsupported valueFrom", var.name))
    }

    /// Sends TERM once, KILL after `grace`; true when every process has exited.
    fn terminate(&mut self, grace: Duration) -> bool {
        let since = *self.terminating_since.get_or_insert_with(|| {
            for c in &self.containers {
                c.signal("-TERM");
            }
            Instant::now()
        });
        if since.elapsed() >= grace {
            for c in &self.containers {
                c.signal("-KILL");
            }
        }
        self.containers.iter_mut().all(|c| match c.child.as_mut() {
            None => true,
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
        })
    }

    fn kill_now(&mut self) {
        for c in &mut self.containers {
            c.signal("-KILL");
            if let Some(mut child) = c.child.take() {
                let _ = child.wait();
            }
        }
    }

    fn remove_ephemeral(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// The pod's status as a kubelet reports it.
    fn status(&self) -> Value {
        let statuses: Vec<Value> = self
            .containers
            .iter()
            .map(ContainerRuntime::status)
            .collect();
        let any_started = self
            .containers
            .iter()
            .any(|c| c.started_at.is_some() || c.last_exit.is_some());
        let all_ready = self.containers.iter().all(|c| c.ready);
        let all_done = self.containers.iter().all(|c| c.done);
        let phase = if all_done {
            let failed = self
                .containers
                .iter()
                .any(|c| c.last_exit.as_ref().is_some_and(|e| e.0 != 0));
            if failed { "Failed" } else { "Succeeded" }
        } else if any_started {
            "Running"
        } else {
            "Pending"
        };
        let cond =
            |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }});
        json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": self.started,
            "conditions": [
                cond("PodScheduled", true),
                cond("Initialized", true),
                cond("ContainersReady", all_ready),
                cond("Ready", all_ready),
            ],
            "containerStatuses": statuses,
        })
    }
}

impl ContainerRuntime {
    fn start(
        &mut self,
        spec: &Container,
        env: Vec<(String, String)>,
        mounts: &[(String, PathBuf)],
        dir: &Path,
        opts: &Options,
    ) {
        self.next_start = None;
        let Some(argv) = argv(spec, mounts, opts) else {
            self.waiting = Some((
                "NoCommand".into(),
                "the local node runs a container's command; this one has none".into(),
            ));
            self.done = true;
            return;
        };
        let log = dir.join("logs").join(format!("{}.log", self.name));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", dir)
            .envs(env)
            .current_dir(dir)
            .stdin(Stdio::null())
            .process_group(0);
        if let Ok((out, err)) = out.and_then(|o| Ok((o.try_clone()?, o))) {
            cmd.stdout(out).stderr(err);
        }
        match cmd.spawn() {
            Ok(child) => {
                let _ = crate::watchdog::guard_group(child.id());
                self.child = Some(child);
                self.started_at = Some(now());
                self.waiting = None;
                self.next_probe = None;
                self.ready = false;
            }
            Err(e) => {
                self.waiting = Some((
                    "RunContainerError".into(),
                    format!("cannot start {}: {e}", argv[0]),
                ));
                self.note_failure(-1, "StartError");
            }
        }
    }

    /// Notices an exit; schedules the restart the policy asks for, with a backoff.
    fn reap(&mut self, policy: &str) {
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let Ok(Some(status)) = child.try_wait() else {
            return;
        };
        self.child = None;
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            128 + status.signal().unwrap_or(0)
        });
        let reason = if code == 0 { "Completed" } else { "Error" };
        let restart = match policy {
            "Never" => false,
            "OnFailure" => code != 0,
            _ => true,
        };
        self.last_exit = Some((
            code,
            reason.into(),
            self.started_at.take().unwrap_or_default(),
            now(),
        ));
        self.ready = false;
        if restart {
            self.restarts += 1;
            let backoff = Duration::from_secs(1u64 << (self.restarts - 1).clamp(0, 5) as u64);
            self.next_start = Some(Instant::now() + backoff);
            self.waiting = Some((
                "CrashLoopBackOff".into(),
                format!("back-off {}s restarting the container", backoff.as_secs()),
            ));
        } else {
            self.done = true;
        }
    }

    fn note_failure(&mut self, code: i32, reason: &str) {
        self.last_exit = Some((code, reason.into(), now(), now()));
        self.restarts += 1;
        self.next_start = Some(Instant::now() + Duration::from_secs(2));
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            if signal == "-KILL" {
                // Programs that leave the group (postgres calls setsid) are found by ancestry.
                for pid in descendants(child.id()) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                }
            }
            kill_group(child.id(), signal);
        }
    }

    async fn probe(&mut self, spec: &Container, ip: &str, mounts: &[(String, PathBuf)]) {
        let Some(probe) = &spec.readiness_probe else {
            self.ready = true;
            return;
        };
        let now = Instant::now();
        let next = *self.next_probe.get_or_insert_with(|| {
            now + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64)
        });
        if now < next {
            return;
        }
        let period = probe.period_seconds.unwrap_or(10).max(1) as u64;
        // Until first ready, probe every second: the kubelet's period is a steady-state figure.
        let every = if self.ready { period } else { period.min(1) };
        self.next_probe = Some(now + Duration::from_secs(every));
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
        let env = self.probe_env();
        self.ready = run_probe(probe, spec, ip, &env, mounts, timeout).await;
    }

    /// The probe runs with the env the process was started with.
    fn probe_env(&self) -> Vec<(String, String)> {
        self.child
            .as_ref()
            .and_then(|c| std::fs::read(format!("/proc/{}/environ", c.id())).ok())
            .map(|raw| {
                raw.split(|b| *b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn status(&self) -> Value {
        let state = match (&self.child, &self.waiting, &self.last_exit) {
            (Some(_), _, _) => json!({"running": {"startedAt": self.started_at}}),
            (None, Some((reason, message)), _) if !self.done => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, _, Some(exit)) => terminated(exit),
            (None, Some((reason, message)), None) => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let last = match (self.child.is_some() || !self.done, &self.last_exit) {
            (true, Some(exit)) => terminated(exit),
            _ => json!({}),
        };
        json!({
            "name": self.name,
            "image": "",
            "imageID": "",
            "containerID": self.child.as_ref().map(|c| format!("localnode://{}", c.id())),
            "ready": self.ready,
            "started": self.child.is_some(),
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        })
    }
}

/// `command` + `args`, paths rewritten, the first word resolved through `opts.binaries`.
fn argv(spec: &Container, mounts: &[(String, PathBuf)], opts: &Options) -> Option<Vec<String>> {
    let command = spec.command.clone().unwrap_or_default();
    if command.is_empty() {
        return None;
    }
    let mut argv: Vec<String> = command
        .into_iter()
        .chain(spec.args.clone().unwrap_or_default())
        .map(|a| rewrite(&a, mounts))
        .collect();
    if let Some((_, path)) = opts.binaries.iter().find(|(n, _)| *n == argv[0]) {
        argv[0] = path.display().to_string();
    }
    Some(argv)
}

fn terminated(exit: &(i32, String, String, String)) -> Value {
    json!({"terminated": {"exitCode": exit.0, "reason": exit.1, "startedAt": exit.2, "finishedAt": exit.3}})
}

async fn run_probe(
    probe: &Probe,
    spec: &Container,
    ip: &str,
    env: &[(String, String)],
    mounts: &[(String, PathBuf)],
    timeout: Duration,
) -> bool {
    let port_of = |p: &IntOrString| -> Option<u16> {
        match p {
            IntOrString::Int(n) => u16::try_from(*n).ok(),
            IntOrString::String(name) => spec
                .ports
                .iter()
                .flatten()
                .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                .and_then(|cp| u16::try_from(cp.container_port).ok()),
        }
    };
    if let Some(exec) = &probe.exec {
        let argv: Vec<String> = exec
            .command
            .iter()
            .flatten()
            .map(|a| rewrite(a, mounts))
            .collect();
        let Some((first, rest)) = argv.split_first() else {
            return false;
        };
        let mut cmd = tokio::process::Command::new(first);
        cmd.args(rest)
            .env_clear()
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        return match tokio::time::timeout(timeout, cmd.status()).await {
            Ok(Ok(status)) => status.success(),
            _ => false,
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_of(&tcp.port) else {
            return false;
        };
        let connect = tokio::net::TcpStream::connect((ip, port));
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = port_of(&http.port) else {
            return false;
        };
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        return matches!(
            tokio::time::timeout(timeout, http_ok(ip, port, &path)).await,
            Ok(true)
        );
    }
    true
}

async fn http_ok(ip: &str, port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect((ip, port)).await else {
        return false;
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {ip}:{port}\r\nUser-Agent: pgwarden-localnode\r\n\r\n"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if s.read_exact(&mut head).await.is_err() {
        return false;
    }
    let code: u16 = String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0);
    (200..400).contains(&code)
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn spec_containers(pod: &Pod) -> Vec<Container> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn namespace_of(pod: &Pod) -> String {
    namespace_of_meta(&pod.metadata)
}

fn namespace_of_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

fn pod_key(pod: &Pod) -> String {
    format!("{}/{}", namespace_of(pod), name_of(pod))
}

/// A claim's folder: named after the claim and its uid, so a re-created claim starts empty.
fn claim_dir(state: &Path, namespace: &str, claim: &str, uid: &str) -> PathBuf {
    let short: String = uid.chars().take(8).collect();
    state
        .join("volumes")
        .join(namespace)
        .join(format!("{claim}-{short}"))
}

/// mountPath → host folder (with subPath), longest first.
fn mounts(
    spec: &Container,
    volumes: &[Volume],
    dir_of: impl Fn(&Volume) -> PathBuf,
) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = spec
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name)?;
            let mut dir = dir_of(v);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                dir = dir.join(sub);
            }
            Some((m.mount_path.trim_end_matches('/').to_string(), dir))
        })
        .collect();
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    out
}

/// A container path under a mount becomes the host folder's path; other values are kept.
fn rewrite(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mp, dir) in mounts {
        if value == mp {
            return dir.display().to_string();
        }
        if let Some(rest) = value
            .strip_prefix(mp.as_str())
            .and_then(|r| r.strip_prefix('/'))
        {
            return dir.join(rest).display().to_string();
        }
    }
    value.to_string()
}

async fn config_map_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, Vec<u8>> = api
        .get_opt(name)
        .await?
        .map(|c| {
            let mut d: BTreeMap<String, Vec<u8>> = c
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            d.extend(
                c.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            d
        })
        .unwrap_or_default();
    Ok(select(data, items))
}

async fn secret_files(
    client: &kube::Client,
    ns: &str,
    name: &str,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    let data: BTreeMap<String, Vec<u8>> = api
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .map(|d| d.into_iter().map(|(k, v)| (k, v.0)).collect())
        .unwrap_or_default();
    Ok(select(data, items))
}

fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[k8s_openapi::api::core::v1::KeyToPath]>,
) -> BTreeMap<String, Vec<u8>> {
    match items {
        None => data,
        Some(items) => items
            .iter()
            .filter_map(|i| Some((i.path.clone(), data.get(&i.key)?.clone())))
            .collect(),
    }
}

fn write_if_changed(path: &Path, content: &[u8]) -> Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension("localnode-tmp");
    std::fs::write(&tmp, content)?;
    chmod(&tmp, 0o644)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot chmod {}", path.display()))
}

/// Every process descending from `root` (from `/proc/*/stat`'s parent pids).
fn descendants(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 2..];
            let ppid: u32 = after.split(' ').nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn kill_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
