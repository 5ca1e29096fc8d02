//! Containers run from their images with `runc`, as a kubelet's runtime would run them.
//!
//! - **Images** ([`Options::images`]: reference → OCI layout) are unpacked by `umoci` once,
//!   next to their layout (`<layout>/../unpacked-<digest>`; later runs and every node reuse
//!   it), and every container's root is that rootfs **read-only**; `/run` is a tmpfs and `/tmp`
//!   the pod's `run/` folder (where PostgreSQL's socket is: the host's psql reaches it).
//! - **Namespaces**: mount, UTS (hostname = pod name), IPC; **not network** (each pod listens
//!   on its own 127.x address of the host) and **not PID**: the tests find PostgreSQL by the
//!   pid in `postmaster.pid` and signal or freeze processes by pid and group (failover, faults,
//!   switchover), which only works if a container's pids are the host's.
//! - **User**: the image's, unless `runAsUser`/`runAsGroup` (container, then pod) say
//!   otherwise; `fsGroup` and `supplementalGroups` as additional groups; capabilities are the
//!   runtime default set less `drop` plus `add`; `allowPrivilegeEscalation: false` is
//!   `noNewPrivileges`. No seccomp profile is applied (none is available here).
//! - **Argv**: `command` replaces the Entrypoint, `args` the Cmd; env is the image's, then the
//!   pod's. Exec probes run inside the container (`runc exec`); stop is `runc kill` TERM, then
//!   KILL of every process of the container; the container is deleted when it has exited.

#[allow(unused_imports)]
use super::*;
use anyhow::bail;
use std::sync::{Mutex, OnceLock};

/// Capabilities a container gets unless its `securityContext` drops them (containerd's
/// default set, which a kubelet's runtime applies).
const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// An unpacked image.
pub(super) struct Image {
    pub(super) rootfs: PathBuf,
    /// The runtime configuration umoci derived from the image (mounts, masked paths, user).
    template: Value,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

impl Image {
    /// The image's user (uid, gid).
    pub(super) fn user(&self) -> (u32, u32) {
        let user = &self.template["process"]["user"];
        let id = |k: &str| user[k].as_u64().unwrap_or(0) as u32;
        (id("uid"), id("gid"))
    }
}

/// The layout of the image a container names, if the node runs that image with runc.
pub(super) fn layout_for<'a>(opts: &'a Options, spec: &Container) -> Option<&'a Path> {
    let image = spec.image.as_deref()?;
    opts.images
        .iter()
        .find(|(reference, _)| reference == image)
        .map(|(_, layout)| layout.as_path())
}

/// The image `reference` (its tag: what follows the last `:`) of `layout`, unpacked once per
/// machine and shared read-only by every container of every node.
pub(super) fn image(reference: &str, layout: &Path) -> Result<Arc<Image>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Image>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(image) = cache.get(layout) {
        return Ok(image.clone());
    }
    let tag = reference.rsplit_once(':').map_or("latest", |(_, t)| t);
    let image = Arc::new(unpack(layout, tag)?);
    cache.insert(layout.to_path_buf(), image.clone());
    Ok(image)
}

fn unpack(layout: &Path, tag: &str) -> Result<Image> {
    let index = read_json(&layout.join("index.json"))?;
    let manifest = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("no image tagged {tag} in {}", layout.display()))?;
    let digest = manifest["digest"].as_str().context("a manifest digest")?;
    let short: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect();
    let parent = layout.parent().unwrap_or(layout);
    let bundle = parent.join(format!("unpacked-{short}"));
    if !bundle.join("config.json").is_file() {
        // Unpacked aside, then renamed: a concurrent test process never sees half a rootfs.
        let started = Instant::now();
        let tmp = parent.join(format!("unpacking-{short}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&tmp)
            .output()
            .context("cannot run umoci")?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            bail!(
                "umoci unpack {}:{tag}: {}",
                layout.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::fs::rename(&tmp, &bundle).is_err() {
            let _ = std::fs::remove_dir_all(&tmp); // another process was first
        }
        eprintln!(
            "localnode: unpacked {}:{tag} in {:.1?}",
            layout.display(),
            started.elapsed()
        );
    }
    let manifest = blob(layout, &manifest["digest"])?;
    let config = blob(layout, &manifest["config"]["digest"])?;
    let words = |key: &str| -> Vec<String> {
        config["config"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(String::from))
            .collect()
    };
    Ok(Image {
        rootfs: bundle.join("rootfs"),
        template: read_json(&bundle.join("config.json"))?,
        entrypoint: words("Entrypoint"),
        cmd: words("Cmd"),
    })
}

fn blob(layout: &Path, digest: &Value) -> Result<Value> {
    let digest = digest.as_str().context("a digest")?;
    read_json(&layout.join("blobs").join(digest.replacen(':', "/", 1)))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))
}

/// A volume bind-mounted into a container: host folder, path inside, read-only.
pub(super) struct Bind {
    pub(super) source: PathBuf,
    pub(super) destination: String,
    pub(super) read_only: bool,
}

/// The container's volume mounts, with their host folders.
pub(super) fn binds(
    spec: &Container,
    volumes: &[Volume],
    dir_of: impl Fn(&Volume) -> PathBuf,
) -> Vec<Bind> {
    let mut out: Vec<Bind> = spec
        .volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let v = volumes.iter().find(|v| v.name == m.name)?;
            let mut source = dir_of(v);
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            Some(Bind {
                source,
                destination: m.mount_path.clone(),
                read_only: m.read_only == Some(true),
            })
        })
        .collect();
    // Parents first: a mount under another is made after it.
    out.sort_by_key(|b| b.destination.trim_end_matches('/').len());
    out
}

/// The user a container runs as: `runAsUser`/`runAsGroup` of the container, then of the
/// pod, then the image's. A uid without a group gets the image's group only if it is the
/// image's user, else group 0 (as containerd without a passwd entry).
pub(super) fn user_of(pod: &Pod, spec: &Container, image: &Image) -> (u32, u32) {
    let (pod_sc, sc) = (pod_security(pod), spec.security_context.as_ref());
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or(pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or(pod_sc.and_then(|s| s.run_as_group));
    let (image_uid, image_gid) = image.user();
    let uid = uid.map_or(image_uid, |u| u as u32);
    let gid = gid.map_or(if uid == image_uid { image_gid } else { 0 }, |g| g as u32);
    (uid, gid)
}

fn pod_security(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodSecurityContext> {
    pod.spec.as_ref()?.security_context.as_ref()
}

/// The pod's `fsGroup`.
pub(super) fn fs_group(pod: &Pod) -> Option<u32> {
    pod_security(pod)?.fs_group.map(|g| g as u32)
}

/// The uid every container of the pod sets explicitly (`runAsUser`), if they agree: a
/// kubelet then gives the projected service-account token to that user.
pub(super) fn explicit_user(pod: &Pod) -> Option<u32> {
    let spec = pod.spec.as_ref()?;
    let pod_uid = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut uids = spec.containers.iter().map(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid)
    });
    let first = uids.next()??;
    uids.all(|u| u == Some(first)).then_some(first as u32)
}

/// `command` replaces the image's Entrypoint, `args` its Cmd (Kubernetes' rules).
pub(super) fn argv_of(spec: &Container, image: &Image) -> Vec<String> {
    let command = spec.command.clone().filter(|c| !c.is_empty());
    let args = spec.args.clone();
    match (command, args) {
        (Some(command), args) => command
            .into_iter()
            .chain(args.unwrap_or_default())
            .collect(),
        (None, Some(args)) => image.entrypoint.iter().cloned().chain(args).collect(),
        (None, None) => image.entrypoint.iter().chain(&image.cmd).cloned().collect(),
    }
}

/// What a container is started with.
pub(super) struct Launch<'a> {
    pub(super) pod: &'a Pod,
    pub(super) spec: &'a Container,
    pub(super) image: &'a Image,
    /// The pod's env (the image's comes first, then this).
    pub(super) env: Vec<(String, String)>,
    pub(super) binds: Vec<Bind>,
    pub(super) pod_dir: &'a Path,
}

/// The runtime configuration (`config.json`) of one container.
pub(super) fn config(launch: &Launch<'_>) -> Result<Value> {
    let Launch {
        pod, spec, image, ..
    } = launch;
    let mut config = image.template.clone();
    let argv = argv_of(spec, image);
    if argv.is_empty() {
        bail!("neither the container nor its image names a command");
    }
    let mut env: Vec<(String, String)> = config["process"]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let (k, v) = kv.as_str()?.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect();
    for (k, v) in &launch.env {
        env.retain(|(name, _)| name != k);
        env.push((k.clone(), v.clone()));
    }
    let (uid, gid) = user_of(pod, spec, image);
    let pod_sc = pod_security(pod);
    let groups: Vec<u32> = fs_group(pod)
        .into_iter()
        .chain(
            pod_sc
                .and_then(|s| s.supplemental_groups.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|g| g as u32),
        )
        .collect();
    // `$(NAME)` in the command and arguments: the container's env, the image's included.
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
    let caps = capabilities(spec);
    let sc = spec.security_context.as_ref();
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    process["args"] = json!(argv);
    process["env"] = json!(
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    if let Some(dir) = spec.working_dir.as_deref().filter(|d| !d.is_empty()) {
        process["cwd"] = json!(dir);
    }
    process["user"] = json!({"uid": uid, "gid": gid, "additionalGids": groups});
    process["capabilities"] = json!({
        "bounding": caps, "effective": caps, "permitted": caps,
        "inheritable": [], "ambient": [],
    });
    process["noNewPrivileges"] =
        json!(sc.and_then(|s| s.allow_privilege_escalation) == Some(false));
    config["root"] = json!({"path": image.rootfs, "readonly": true});
    let name: String = name_of(pod).chars().take(63).collect();
    config["hostname"] = json!(name);
    if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network" && n["type"] != "pid");
    }
    let mounts = config["mounts"]
        .as_array_mut()
        .context("the image's runtime configuration has no mounts")?;
    mounts.retain(|m| m["destination"] != "/run" && m["destination"] != "/tmp");
    mounts.push(
        json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=755"]}),
    );
    let run = launch.pod_dir.join("run");
    mounts.push(json!({"destination": "/tmp", "type": "bind", "source": run,
        "options": ["rbind", "rw"]}));
    for b in &launch.binds {
        let mode = if b.read_only { "ro" } else { "rw" };
        mounts.push(json!({"destination": b.destination, "type": "bind",
            "source": b.source, "options": ["rbind", mode]}));
    }
    Ok(config)
}

/// The runtime default capabilities, less the container's `drop` (`ALL`: every one) plus
/// its `add`, as runc names them.
fn capabilities(spec: &Container) -> Vec<String> {
    let caps = spec
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.clone())
        .unwrap_or_default();
    let drop = caps.drop.unwrap_or_default();
    let all = drop.iter().any(|d| d == "ALL");
    let mut out: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| !all && !drop.iter().any(|d| d.trim_start_matches("CAP_") == **c))
        .map(|c| c.to_string())
        .collect();
    for add in caps.add.unwrap_or_default() {
        let add = add.trim_start_matches("CAP_").to_string();
        if !out.contains(&add) {
            out.push(add);
        }
    }
    out.into_iter().map(|c| format!("CAP_{c}")).collect()
}

/// The container's runc id: unique on this machine (the pod's uid), stable across restarts.
pub(super) fn container_id(pod: &Pod, container: &str) -> String {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    format!("pgw-{uid}-{container}")
}

/// Writes the bundle (`<podDir>/containers/<name>/config.json`) and starts `runc run` in the
/// foreground (it waits for the container and exits with its status), output to `log`.
pub(super) fn spawn(launch: &Launch<'_>, id: &str, log: &Path) -> Result<Child> {
    let bundle = launch.pod_dir.join("containers").join(&launch.spec.name);
    std::fs::create_dir_all(&bundle)?;
    let config = config(launch)?;
    std::fs::write(bundle.join("config.json"), config.to_string())?;
    delete(id); // a container left by a run that was killed
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let child = Command::new("runc")
        .arg("run")
        .arg("--bundle")
        .arg(&bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .context("cannot run runc")?;
    guard(child.id(), id);
    Ok(child)
}

/// `runc kill`: TERM to the container's first process (what a kubelet's stop sends), KILL to
/// every process of the container.
pub(super) fn kill(id: &str, signal: &str) {
    let signal = signal.trim_start_matches('-');
    let mut cmd = Command::new("runc");
    cmd.arg("kill");
    if signal == "KILL" {
        cmd.arg("--all");
    }
    let _ = cmd
        .args([id, signal])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `runc delete --force`: the container, whatever its state, is gone.
pub(super) fn delete(id: &str) {
    let _ = Command::new("runc")
        .args(["delete", "--force", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// An exec probe inside the container: its user, env and namespaces (`runc exec`).
pub(super) fn exec(id: &str, argv: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("runc");
    cmd.args(["exec", id]).args(argv);
    cmd
}

/// Deletes container `id` once this process ends (also by SIGKILL, when no Drop runs) while
/// its `runc run` (pid `runc`) still runs: TERM, up to 5 s, then `runc delete --force`.
const WATCHDOG: &str = r#"
    while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 0.5; done
    kill -0 "$1" 2>/dev/null && exit 0
    runc kill "$3" TERM 2>/dev/null
    i=0; while kill -0 "$2" 2>/dev/null && [ $i -lt 25 ]; do sleep 0.2; i=$((i+1)); done
    runc delete --force "$3" 2>/dev/null
"#;

fn guard(runc: u32, id: &str) {
    let _ = Command::new("sh")
        .args(["-c", WATCHDOG, "pgwarden-runc-watchdog"])
        .arg(std::process::id().to_string())
        .arg(runc.to_string())
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
}

/// The API server as in-cluster configuration finds it: `KUBERNETES_SERVICE_HOST` and
/// `_PORT` from the node's kubeconfig (`https://127.0.0.1:<port>`).
pub(super) fn service_env(kubeconfig: &Path) -> Result<Vec<(String, String)>> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let server = config
        .clusters
        .iter()
        .find_map(|c| c.cluster.as_ref()?.server.clone())
        .context("the node's kubeconfig names no server")?;
    let authority = server
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("no port in the API server's address {server}"))?;
    Ok(vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.to_string()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
    ])
}

/// Gives `path` to `uid:gid` (not following a link), when it is not theirs already.
pub(super) fn own(path: &Path, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if (meta.uid(), meta.gid()) != (uid, gid) {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))
            .with_context(|| format!("cannot chown {}", path.display()))?;
    }
    Ok(())
}

/// The files of a projected volume that are service-account tokens.
pub(super) fn token_paths(v: &Volume) -> Vec<String> {
    v.projected
        .iter()
        .flat_map(|p| p.sources.iter().flatten())
        .filter_map(|s| Some(s.service_account_token.as_ref()?.path.clone()))
        .collect()
}

/// Writes a ConfigMap, Secret or projected file as a kubelet does for a pod with `fsGroup`
/// (group `fsGroup`, readable by it) or whose containers all set one `runAsUser` (the
/// service-account token is theirs, mode 0600); otherwise root's, with `mode`.
pub(super) fn write_volume_file(
    pod: &Pod,
    file: &Path,
    content: &[u8],
    mode: u32,
    token: bool,
) -> Result<()> {
    let (user, group) = (explicit_user(pod), fs_group(pod));
    let mut mode = mode;
    if token && (user.is_some() || group.is_some()) {
        mode = 0o600;
    }
    if group.is_some() {
        mode |= 0o440;
    }
    write_mode_if_changed(file, content, mode)?;
    let owner = if token { user.unwrap_or(0) } else { 0 };
    own(file, owner, group.unwrap_or(0))
}

impl PodRuntime {
    /// Whether any container of the pod runs from its image (runc).
    pub(super) fn runs_images(&self, opts: &Options) -> bool {
        spec_containers(&self.pod)
            .iter()
            .any(|c| layout_for(opts, c).is_some())
    }

    /// Starts container `i` from its image: its claims given to its user first (`fsGroup`
    /// as their group), as a provisioner's volume is writable by the pod.
    pub(super) fn start_runc(
        &mut self,
        ctx: &Ctx<'_>,
        i: usize,
        spec: &Container,
        volumes: &[Volume],
        env: Vec<(String, String)>,
        layout: &Path,
    ) -> Result<()> {
        let image = image(spec.image.as_deref().unwrap_or_default(), layout)?;
        let (uid, gid) = user_of(&self.pod, spec, &image);
        for v in volumes
            .iter()
            .filter(|v| v.persistent_volume_claim.is_some())
        {
            let dir = self.volume_dir(ctx.opts, v);
            if uid != 0 {
                own(&dir, uid, fs_group(&self.pod).unwrap_or(gid))?;
            }
        }
        let binds = binds(spec, volumes, |v| self.volume_dir(ctx.opts, v));
        let launch = Launch {
            pod: &self.pod,
            spec,
            image: &image,
            env,
            binds,
            pod_dir: &self.dir,
        };
        self.containers[i].start_runc(&launch);
        Ok(())
    }
}

impl ContainerRuntime {
    fn start_runc(&mut self, launch: &Launch<'_>) {
        self.next_start = None;
        let id = container_id(launch.pod, &self.name);
        let log = launch
            .pod_dir
            .join("logs")
            .join(format!("{}.log", self.name));
        match spawn(launch, &id, &log) {
            Ok(child) => {
                self.child = Some(child);
                self.runc = Some(id);
                self.image = launch.spec.image.clone().unwrap_or_default();
                self.started_at = Some(now());
                self.waiting = None;
                self.next_probe = None;
                self.liveness = Default::default();
                self.ready = false;
            }
            Err(e) => {
                self.waiting = Some(("RunContainerError".into(), format!("{e:#}")));
                self.note_failure(-1, "StartError");
            }
        }
    }
}
