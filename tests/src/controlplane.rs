//! A real control plane for the tests (built by `cargo xtask setup`).
//!
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from their Go
//! modules (see `xtask/src/controlplane.rs`), run on 127.0.0.1 with a private CA, client
//! certificates, a service-account key and an admin kubeconfig generated on the fly:
//!
//! ```text
//!   kubectl / kube::Client ──TLS, admin cert──▶ kube-apiserver ──http──▶ etcd
//!                                                   ▲    ▲
//!             kube-controller-manager ──TLS─────────┘    └──TLS── kube-scheduler
//! ```
//!
//! The same start-up code serves `cargo xtask sandbox up` (fixed ports, `.state/sandbox`,
//! processes outlive the command) and the test binaries ([`shared`]: free ports, a state
//! folder per test binary, everything stopped when the binary ends).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use std::os::unix::process::CommandExt;

/// The pinned Kubernetes release (`k8s.io/kubernetes`, staging modules at `v0.37.2`).
pub const KUBERNETES_VERSION: &str = "v1.37.2";
/// The etcd release Kubernetes v1.37 is tested with (its `build/dependencies.yaml`).
pub const ETCD_VERSION: &str = "v3.7.0";
/// A directory holding all five binaries, overriding the `.cache` default.
pub const BIN_DIR_ENV: &str = "PGWARDEN_CONTROLPLANE_BIN";
/// Set to keep a test binary's control-plane state (logs, etcd data) after it ends.
pub const KEEP_STATE_ENV: &str = "PGWARDEN_KEEP_STATE";

/// The workspace root (the parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives one level below the workspace root")
        .to_path_buf()
}

/// Paths to the control-plane binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubectl: PathBuf,
}

impl Bins {
    /// Where `cargo xtask setup` puts the Kubernetes binaries.
    pub fn kubernetes_dir() -> PathBuf {
        workspace_root()
            .join(".cache/kubernetes")
            .join(KUBERNETES_VERSION)
    }

    /// Where `cargo xtask setup` puts etcd.
    pub fn etcd_dir() -> PathBuf {
        workspace_root().join(".cache/etcd").join(ETCD_VERSION)
    }

    /// The binaries in the `.cache` folder.
    pub fn cached() -> Self {
        Self::from_dirs(
            &Self::kubernetes_dir().join("bin"),
            &Self::etcd_dir().join("bin"),
        )
    }

    /// `$PGWARDEN_CONTROLPLANE_BIN` when set, else the `.cache` folder.
    pub fn locate() -> Self {
        match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => Self::from_dirs(Path::new(&dir), Path::new(&dir)),
            None => Self::cached(),
        }
    }

    fn from_dirs(kubernetes: &Path, etcd: &Path) -> Self {
        Self {
            etcd: etcd.join("etcd"),
            kube_apiserver: kubernetes.join("kube-apiserver"),
            kube_controller_manager: kubernetes.join("kube-controller-manager"),
            kube_scheduler: kubernetes.join("kube-scheduler"),
            kubectl: kubernetes.join("kubectl"),
        }
    }

    /// Every binary, in start-up order, kubectl last.
    pub fn all(&self) -> [&Path; 5] {
        [
            &self.etcd,
            &self.kube_apiserver,
            &self.kube_controller_manager,
            &self.kube_scheduler,
            &self.kubectl,
        ]
    }

    /// The binaries that are not there.
    pub fn missing(&self) -> Vec<&Path> {
        self.all().into_iter().filter(|p| !p.is_file()).collect()
    }
}

/// The ports one control plane listens on (all on 127.0.0.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

impl Ports {
    /// The sandbox's fixed ports: below the kernel's ephemeral range (32768+), from which
    /// the tests' free ports come.
    pub const SANDBOX: Ports = Ports {
        etcd_client: 16379,
        etcd_peer: 16380,
        apiserver: 16443,
        controller_manager: 16257,
        scheduler: 16259,
    };

    /// Five ports free right now, chosen by the kernel.
    pub fn free() -> Result<Ports> {
        let listeners = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot bind a free port on 127.0.0.1")?;
        let port = |i: usize| listeners[i].local_addr().map(|a| a.port());
        Ok(Ports {
            etcd_client: port(0)?,
            etcd_peer: port(1)?,
            apiserver: port(2)?,
            controller_manager: port(3)?,
            scheduler: port(4)?,
        })
    }
}

/// How a control plane is run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Certificates, kubeconfigs, etcd data and logs live here.
    pub dir: PathBuf,
    pub ports: Ports,
    /// etcd without fsync: fast, and fine for throw-away test data.
    pub unsafe_no_fsync: bool,
    /// How long to wait for each component to become ready.
    pub timeout: Duration,
}

/// One started server process.
#[derive(Debug)]
pub struct Component {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Component {
    /// Whether it has exited (only known for processes this process started).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlPlane {
    pub dir: PathBuf,
    pub ports: Ports,
    pub bins: Bins,
    /// The admin (`system:masters`) kubeconfig.
    pub kubeconfig: PathBuf,
    pub components: Vec<Component>,
}

/// The files of one control plane's state folder.
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn pki(&self) -> PathBuf {
        self.dir.join("pki")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    pub fn etcd_data(&self) -> PathBuf {
        self.dir.join("etcd")
    }
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.kubeconfig("admin")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    /// What the API server audits: the operator's writes (see [`AUDIT_POLICY`]).
    pub fn audit_policy(&self) -> PathBuf {
        self.dir.join("audit-policy.yaml")
    }
    /// The API server's audit log, one JSON event a line.
    pub fn audit_log(&self) -> PathBuf {
        self.logs().join("audit.log")
    }
    /// `name pid` lines of the running components (written by the sandbox).
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pids")
    }
}

impl ControlPlane {
    /// Starts etcd, then kube-apiserver, then the controller-manager and the scheduler,
    /// waiting for each to be ready. On failure, stops what it started and reports the
    /// failing component's log tail.
    pub fn start(bins: &Bins, opts: &Options) -> Result<ControlPlane> {
        Self::start_with(bins, opts, |_| Ok(()))
    }

    /// [`ControlPlane::start`], calling `on_group` with the components' process group as
    /// soon as the first one (etcd) runs.
    pub fn start_with(
        bins: &Bins,
        opts: &Options,
        on_group: impl FnOnce(u32) -> Result<()>,
    ) -> Result<ControlPlane> {
        let missing = bins.missing();
        if !missing.is_empty() {
            bail!(
                "control-plane binaries missing: {missing:?}; run `cargo xtask setup` \
                 (or point ${BIN_DIR_ENV} at a folder holding them)"
            );
        }
        let layout = Layout {
            dir: opts.dir.clone(),
        };
        std::fs::create_dir_all(layout.logs())?;
        pki::ensure(&layout, opts.ports)?;
        std::fs::write(layout.audit_policy(), AUDIT_POLICY)
            .with_context(|| format!("cannot write {}", layout.audit_policy().display()))?;
        let mut cp = ControlPlane {
            dir: opts.dir.clone(),
            ports: opts.ports,
            bins: bins.clone(),
            kubeconfig: layout.admin_kubeconfig(),
            components: Vec::new(),
        };
        if let Err(e) = cp.start_components(&layout, opts, on_group) {
            cp.stop();
            return Err(e);
        }
        Ok(cp)
    }

    fn start_components(
        &mut self,
        layout: &Layout,
        opts: &Options,
        on_group: impl FnOnce(u32) -> Result<()>,
    ) -> Result<()> {
        let deadline = || Instant::now() + opts.timeout;
        self.spawn(
            layout,
            "etcd",
            &self.bins.etcd.clone(),
            etcd_args(layout, opts),
        )?;
        on_group(self.components[0].pid)?;
        let port = opts.ports.etcd_client;
        self.wait_for("etcd", deadline(), |_| etcd_healthy(port))?;

        let args = apiserver_args(layout, opts.ports);
        self.spawn(
            layout,
            "kube-apiserver",
            &self.bins.kube_apiserver.clone(),
            args,
        )?;
        self.wait_for("kube-apiserver", deadline(), |cp| {
            cp.kubectl(&["get", "--raw", "/readyz"]).ok()
        })?;

        let (kcm, sched) = (
            self.bins.kube_controller_manager.clone(),
            self.bins.kube_scheduler.clone(),
        );
        let args = controller_manager_args(layout, opts.ports.controller_manager);
        self.spawn(layout, "kube-controller-manager", &kcm, args)?;
        let args = scheduler_args(layout, opts.ports.scheduler);
        self.spawn(layout, "kube-scheduler", &sched, args)?;
        for (name, port) in [
            ("kube-controller-manager", opts.ports.controller_manager),
            ("kube-scheduler", opts.ports.scheduler),
        ] {
            let server = format!("https://127.0.0.1:{port}");
            self.wait_for(name, deadline(), |cp| {
                cp.kubectl(&["--server", &server, "get", "--raw", "/healthz"])
                    .ok()
            })?;
        }
        Ok(())
    }

    fn spawn(
        &mut self,
        layout: &Layout,
        name: &'static str,
        bin: &Path,
        args: Vec<String>,
    ) -> Result<()> {
        let log = layout.log(name);
        let out = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .current_dir(&layout.dir)
            // One process group for the whole control plane (led by etcd), apart from the
            // caller's: a Ctrl-C meant for `cargo test` does not reach it, a group kill
            // stops all of it.
            .process_group(self.components.first().map_or(0, |c| c.pid as i32));
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        self.components.push(Component {
            name,
            pid: child.id(),
            log,
            child: Some(child),
        });
        Ok(())
    }

    /// Polls `ready` until it returns `Some`, failing with the log tail of `name` when the
    /// component exits or the deadline passes.
    fn wait_for<T>(
        &mut self,
        name: &str,
        deadline: Instant,
        ready: impl Fn(&ControlPlane) -> Option<T>,
    ) -> Result<T> {
        loop {
            if let Some(v) = ready(self) {
                return Ok(v);
            }
            let component = self
                .components
                .iter_mut()
                .find(|c| c.name == name)
                .expect("waiting for a started component");
            if let Some(status) = component.exited() {
                bail!(
                    "{name} exited ({status}); last lines of {}:\n{}",
                    component.log.display(),
                    log_tail(&component.log, 40)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not ready in time; last lines of {}:\n{}",
                    component.log.display(),
                    log_tail(&component.log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops every component: SIGTERM, then SIGKILL after a grace period.
    pub fn stop(&mut self) {
        let pids: Vec<u32> = self.components.iter().rev().map(|c| c.pid).collect();
        stop_pids(&pids, Duration::from_secs(10));
        for c in &mut self.components {
            if let Some(child) = c.child.as_mut() {
                let _ = child.wait();
            }
        }
        self.components.clear();
    }

    /// Runs kubectl with the admin kubeconfig; `Ok(stdout)` when it succeeds, `Err` with
    /// its stderr otherwise.
    pub fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_with_input(args, None).into_result()
    }

    /// Runs kubectl with the admin kubeconfig, feeding `input` on stdin.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> KubectlOutput {
        run_kubectl(&self.bins.kubectl, &self.kubeconfig, args, input)
    }

    /// The files of this control plane's state folder.
    pub fn layout(&self) -> Layout {
        Layout {
            dir: self.dir.clone(),
        }
    }

    /// The kubeconfig of [`OPERATOR_USER`]: what `deploy/operator.yaml`'s ClusterRole
    /// grants, once [`ControlPlane::install_operator_rbac`] has bound it.
    pub fn operator_kubeconfig(&self) -> PathBuf {
        self.layout().kubeconfig("operator")
    }

    /// Applies the ClusterRole of `deploy/operator.yaml` (the one shipped to real clusters)
    /// and binds it to [`OPERATOR_USER`], so the operator under test has exactly the rights a
    /// deployed one has.
    pub fn install_operator_rbac(&self) -> Result<(), String> {
        let manifest = operator_rbac_manifest()?;
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&manifest))
            .into_result()
            .map(|_| ())
    }

    /// Applies the agent's admission policy of `deploy/operator.yaml` (see
    /// [`agent_admission_manifest`]) and waits until the API server has checked it: its
    /// expressions type-checked against the CRDs without a warning.
    pub fn install_agent_admission(&self) -> Result<(), String> {
        let manifest = agent_admission_manifest()?;
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&manifest))
            .into_result()?;
        let policy = "validatingadmissionpolicy/pgwarden-agent-own-cluster";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let fields = "jsonpath={.metadata.generation} {.status.observedGeneration} \
                {.status.typeChecking.expressionWarnings}";
            let checked = self.kubectl(&["get", policy, "-o", fields])?;
            let mut fields = checked.splitn(3, ' ');
            let (generation, observed) = (fields.next(), fields.next());
            let warnings = fields.next().unwrap_or_default().trim();
            if generation.is_some() && generation == observed {
                return match warnings {
                    "" => Ok(()),
                    w => Err(format!("{policy} does not type-check: {w}")),
                };
            }
            if Instant::now() > deadline {
                return Err(format!("{policy} never checked: {checked}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every request of the API server's audit log (the operator's, see [`AUDIT_POLICY`]),
    /// in the order the server answered them.
    pub fn audited_requests(&self) -> Vec<AuditedRequest> {
        std::fs::read_to_string(self.layout().audit_log())
            .unwrap_or_default()
            .lines()
            .filter_map(parse_audit_line)
            .collect()
    }

    /// The writes among [`ControlPlane::audited_requests`].
    pub fn audited_writes(&self) -> Vec<AuditedRequest> {
        let mut requests = self.audited_requests();
        requests.retain(AuditedRequest::is_write);
        requests
    }

    /// A client with the admin credentials.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).expect("cannot build a kube client")
    }

    /// Writes `name pid` lines, in start order, to the state folder's `pids` file.
    pub fn write_pid_file(&self) -> Result<()> {
        let pids: String = self
            .components
            .iter()
            .map(|c| format!("{} {}\n", c.name, c.pid))
            .collect();
        let path = self.layout().pid_file();
        std::fs::write(&path, pids).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The PID of the process group all components belong to.
    pub fn process_group(&self) -> Option<u32> {
        self.components.first().map(|c| c.pid)
    }
}

/// What a kubectl run printed.
#[derive(Clone, Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KubectlOutput {
    pub fn into_result(self) -> Result<String, String> {
        if self.success {
            Ok(self.stdout)
        } else {
            Err(self.stderr)
        }
    }
}

/// Runs `kubectl --kubeconfig <kubeconfig> <args>`.
pub fn run_kubectl(
    kubectl: &Path,
    kubeconfig: &Path,
    args: &[&str],
    input: Option<&str>,
) -> KubectlOutput {
    let mut cmd = Command::new(kubectl);
    // kubectl's discovery cache beside the kubeconfig, not in ~/.kube: every test binary
    // has its own API server on its own port.
    if let Some(dir) = kubeconfig.parent() {
        cmd.env("KUBECACHEDIR", dir.join("kubectl-cache"));
    }
    cmd.arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubectl.display()));
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .expect("cannot write to kubectl");
    }
    let out = child.wait_with_output().expect("kubectl did not finish");
    KubectlOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a process is alive and runs `bin` (guards against reused PIDs).
pub fn runs(pid: u32, bin: &Path) -> bool {
    let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    !is_zombie(pid) && std::fs::canonicalize(bin).is_ok_and(|b| b == exe)
}

/// Stops each PID in turn (callers pass them in reverse start order: the API server must
/// go before etcd, or it waits for etcd until killed): SIGTERM, then SIGKILL if it is still
/// alive after `grace`.
pub fn stop_pids(pids: &[u32], grace: Duration) {
    let alive = |pid: u32| Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
    let signal = |sig: &str, pid: u32| {
        let _ = Command::new("kill")
            .args([sig, &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    };
    for &pid in pids {
        signal("-TERM", pid);
        let deadline = Instant::now() + grace;
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if alive(pid) {
            signal("-KILL", pid);
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    state
        .rsplit(')')
        .next()
        .is_some_and(|s| s.trim_start().starts_with('Z'))
}

/// etcd's `/health` over plain HTTP on loopback.
fn etcd_healthy(port: u16) -> Option<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    body.contains(r#""health":"true""#).then_some(())
}

fn etcd_args(layout: &Layout, opts: &Options) -> Vec<String> {
    let (client, peer) = (opts.ports.etcd_client, opts.ports.etcd_peer);
    let mut args = vec![
        "--name=default".to_string(),
        format!("--data-dir={}", layout.etcd_data().display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
        "--log-level=warn".to_string(),
    ];
    if opts.unsafe_no_fsync {
        args.push("--unsafe-no-fsync".to_string());
    }
    args
}

fn apiserver_args(layout: &Layout, ports: Ports) -> Vec<String> {
    let pki = |f: &str| layout.pki().join(f).display().to_string();
    vec![
        format!("--etcd-servers=http://127.0.0.1:{}", ports.etcd_client),
        "--bind-address=127.0.0.1".to_string(),
        "--advertise-address=127.0.0.1".to_string(),
        format!("--secure-port={}", ports.apiserver),
        format!("--cert-dir={}", layout.pki().display()),
        format!("--tls-cert-file={}", pki("serving.crt")),
        format!("--tls-private-key-file={}", pki("serving.key")),
        format!("--client-ca-file={}", pki("ca.crt")),
        format!(
            "--requestheader-client-ca-file={}",
            pki("front-proxy-ca.crt")
        ),
        "--requestheader-allowed-names=front-proxy-client".to_string(),
        "--requestheader-username-headers=X-Remote-User".to_string(),
        "--requestheader-group-headers=X-Remote-Group".to_string(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
        format!("--proxy-client-cert-file={}", pki("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", pki("front-proxy-client.key")),
        "--authorization-mode=Node,RBAC".to_string(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
        format!("--service-account-key-file={}", pki("sa.pub")),
        format!("--service-account-signing-key-file={}", pki("sa.key")),
        "--service-cluster-ip-range=10.0.0.0/16".to_string(),
        // No Endpoints for the `kubernetes` Service: a loopback address is not a valid
        // endpoint, and nothing here reaches the API server through the Service.
        "--endpoint-reconciler-type=none".to_string(),
        "--profiling=false".to_string(),
        // Namespaces may pin their pods to a node (annotation
        // scheduler.alpha.kubernetes.io/node-selector): tests with a local node each keep
        // their pods on their own node, as the scheduler would otherwise spread them. Added
        // to the default plugins, which include ValidatingAdmissionPolicy (deploy/operator.yaml
        // holds an agent to its own Cluster's objects with one).
        "--enable-admission-plugins=PodNodeSelector".to_string(),
        // The API server's own record of the operator's writes: tests count them there,
        // not with the operator's counters.
        format!("--audit-policy-file={}", layout.audit_policy().display()),
        format!("--audit-log-path={}", layout.audit_log().display()),
        "--audit-log-format=json".to_string(),
        "--audit-log-mode=blocking".to_string(),
    ]
}

/// The user (client-certificate common name) the operator runs as in tests and the sandbox
/// (the demo and tests/tests/install.rs install it from deploy/: its ServiceAccount).
pub const OPERATOR_USER: &str = "pgwarden-operator";

/// Audit the operator's requests, one event each when answered (metadata only: no request or
/// response bodies, so no Secret value can reach the log), nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: Metadata
    users: [pgwarden-operator]
  - level: None
";

/// The ClusterRole of `deploy/operator.yaml` (the one shipped to real clusters) and a binding
/// of it to [`OPERATOR_USER`], as one manifest for `kubectl apply -f -`.
pub fn operator_rbac_manifest() -> Result<String, String> {
    let path = workspace_root().join("deploy/operator.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let role = operator_cluster_role(&text)
        .ok_or_else(|| format!("no ClusterRole in {}", path.display()))?;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: pgwarden-operator-user}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: pgwarden-operator}}
subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {OPERATOR_USER}}}]
"
    );
    Ok(format!("{role}\n---\n{binding}"))
}

/// The ValidatingAdmissionPolicy of `deploy/operator.yaml` that holds an agent to its own
/// Cluster's objects, and its binding, as one manifest for `kubectl apply -f -`.
pub fn agent_admission_manifest() -> Result<String, String> {
    let path = workspace_root().join("deploy/operator.yaml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let kinds = [
        "kind: ValidatingAdmissionPolicy",
        "kind: ValidatingAdmissionPolicyBinding",
    ];
    let docs: Vec<&str> = text
        .split("\n---")
        .filter(|doc| doc.lines().any(|l| kinds.contains(&l)))
        .collect();
    if docs.len() != kinds.len() {
        return Err(format!("{} lacks {kinds:?}", path.display()));
    }
    Ok(docs.join("\n---"))
}

/// The `ClusterRole` document of a multi-document manifest, as YAML.
fn operator_cluster_role(manifest: &str) -> Option<String> {
    manifest
        .split("\n---")
        .find(|doc| doc.lines().any(|l| l == "kind: ClusterRole"))
        .map(str::to_string)
}

/// One request the API server recorded in its audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedRequest {
    pub user: String,
    pub verb: String,
    /// `resource` or `resource/subresource`, e.g. `clusters/status`.
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
}

impl AuditedRequest {
    /// Whether the request changes something (create, update, patch, delete).
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

impl std::fmt::Display for AuditedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}/{} ({}) by {}",
            self.verb, self.resource, self.namespace, self.name, self.code, self.user
        )
    }
}

/// Parses one line of a JSON audit log; `None` for lines that are not events.
pub fn parse_audit_line(line: &str) -> Option<AuditedRequest> {
    let event: serde_json::Value = serde_json::from_str(line).ok()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let object = &event["objectRef"];
    let resource = match object["subresource"].as_str() {
        Some(sub) => format!("{}/{sub}", text(&object["resource"])),
        None => text(&object["resource"]),
    };
    Some(AuditedRequest {
        user: text(&event["user"]["username"]),
        verb: event["verb"].as_str()?.to_string(),
        resource,
        namespace: text(&object["namespace"]),
        name: text(&object["name"]),
        code: event["responseStatus"]["code"].as_i64().unwrap_or_default(),
    })
}

fn component_args(layout: &Layout, user: &str, port: u16) -> Vec<String> {
    let kubeconfig = layout.kubeconfig(user).display().to_string();
    let pki = |f: &str| layout.pki().join(f).display().to_string();
    vec![
        format!("--kubeconfig={kubeconfig}"),
        format!("--authentication-kubeconfig={kubeconfig}"),
        format!("--authorization-kubeconfig={kubeconfig}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
        format!("--tls-cert-file={}", pki("serving.crt")),
        format!("--tls-private-key-file={}", pki("serving.key")),
        // One instance of each: no leader election, so a restart does not wait for the
        // previous lease to expire.
        "--leader-elect=false".to_string(),
        "--profiling=false".to_string(),
    ]
}

fn controller_manager_args(layout: &Layout, port: u16) -> Vec<String> {
    let pki = |f: &str| layout.pki().join(f).display().to_string();
    let mut args = component_args(layout, "controller-manager", port);
    args.extend([
        format!("--service-account-private-key-file={}", pki("sa.key")),
        format!("--root-ca-file={}", pki("ca.crt")),
        "--use-service-account-credentials=true".to_string(),
    ]);
    args
}

fn scheduler_args(layout: &Layout, port: u16) -> Vec<String> {
    component_args(layout, "scheduler", port)
}

/// The private CA, the certificates and the kubeconfigs.
mod pki {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    /// The users of the control plane: (file name, common name, organisation). The
    /// operator's user is in no group: it has what `deploy/operator.yaml`'s ClusterRole grants
    /// (bound by [`ControlPlane::install_operator_rbac`]), as in a real cluster.
    const USERS: [(&str, &str, &str); 4] = [
        ("admin", "pgwarden-admin", "system:masters"),
        ("controller-manager", "system:kube-controller-manager", ""),
        ("scheduler", "system:kube-scheduler", ""),
        ("operator", super::OPERATOR_USER, ""),
    ];

    /// Writes the CA, the serving and client certificates, the service-account key and
    /// the kubeconfigs, unless already there (so a restarted sandbox keeps its CA and the
    /// printed KUBECONFIG stays valid). Kubeconfigs are rewritten: the port may change.
    pub fn ensure(layout: &Layout, ports: Ports) -> Result<()> {
        let dir = layout.pki();
        // `sa.pub` is written last: its presence means a complete set (with every user's
        // certificate: a state folder from before a user was added is generated anew).
        let complete = dir.join("sa.pub").exists()
            && USERS
                .iter()
                .all(|(user, _, _)| dir.join(format!("{user}.crt")).exists());
        if !complete {
            generate(&dir)
                .with_context(|| format!("cannot write certificates to {}", dir.display()))?;
        }
        for (user, _, _) in USERS {
            let server = format!("https://127.0.0.1:{}", ports.apiserver);
            write(&layout.kubeconfig(user), &kubeconfig(&dir, user, &server))?;
        }
        Ok(())
    }

    fn generate(dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        // The front proxy's CA signs the client certificate the API server uses towards
        // aggregated API servers; the controller-manager and scheduler read it too.
        let front_proxy = ca(dir, "front-proxy-ca", "pgwarden sandbox front-proxy CA")?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, "front-proxy-client");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        leaf(dir, "front-proxy-client", client, &front_proxy)?;

        let issuer = ca(dir, "ca", "pgwarden sandbox CA")?;

        let names = [
            "127.0.0.1",
            "10.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ];
        let mut serving = CertificateParams::new(names.map(String::from).to_vec())?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf(dir, "serving", serving, &issuer)?;

        for (user, cn, org) in USERS {
            let mut client = CertificateParams::new(Vec::<String>::new())?;
            client.distinguished_name.push(DnType::CommonName, cn);
            if !org.is_empty() {
                client
                    .distinguished_name
                    .push(DnType::OrganizationName, org);
            }
            client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            leaf(dir, user, client, &issuer)?;
        }

        let sa = KeyPair::generate()?;
        write(&dir.join("sa.key"), &sa.serialize_pem())?;
        write(&dir.join("sa.pub"), &sa.public_key_pem())?;
        Ok(())
    }

    /// A self-signed CA written to `<name>.crt` and `<name>.key`.
    fn ca(dir: &Path, name: &str, common_name: &str) -> Result<Issuer<'static, KeyPair>> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        write(
            &dir.join(format!("{name}.crt")),
            &params.self_signed(&key)?.pem(),
        )?;
        write(&dir.join(format!("{name}.key")), &key.serialize_pem())?;
        Ok(Issuer::new(params, key))
    }

    fn leaf(
        dir: &Path,
        name: &str,
        mut params: CertificateParams,
        issuer: &Issuer<'_, KeyPair>,
    ) -> Result<()> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, issuer)?;
        write(&dir.join(format!("{name}.crt")), &cert.pem())?;
        write(&dir.join(format!("{name}.key")), &key.serialize_pem())
    }

    fn kubeconfig(pki: &Path, user: &str, server: &str) -> String {
        let mut s = String::new();
        let ca = pki.join("ca.crt");
        let (crt, key) = (
            pki.join(format!("{user}.crt")),
            pki.join(format!("{user}.key")),
        );
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Config\n\
             clusters:\n- name: pgwarden\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
             users:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\n\
             contexts:\n- name: pgwarden\n  context:\n    cluster: pgwarden\n    user: {user}\n\
             current-context: pgwarden\n",
            ca.display(),
            crt.display(),
            key.display(),
        );
        s
    }

    fn write(path: &Path, text: &str) -> Result<()> {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

// ---------------------------------------------------------------------------------------
// The test harness: one control plane per test binary.

/// The control plane of this test binary, started on first use (free ports, its own state
/// folder under `.state/tests/`), and stopped by a watchdog when the binary ends however
/// it ends (`cargo test` never drops statics).
pub fn shared() -> &'static ControlPlane {
    static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
    let started = SHARED.get_or_init(|| start_for_tests().map_err(|e| format!("{e:#}")));
    match started {
        Ok(cp) => cp,
        Err(e) => panic!("cannot start the test control plane: {e}"),
    }
}

fn start_for_tests() -> Result<ControlPlane> {
    start_watched(&format!("cp-{}", std::process::id()))
}

/// A control plane of one test's own, for tests that need isolation (say, one that stops
/// the API server): stopped when dropped, and by the watchdog if the test binary dies.
pub fn isolated() -> Isolated {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "cp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed) + 1
    );
    match start_watched(&name) {
        Ok(cp) => Isolated(cp),
        Err(e) => panic!("cannot start an isolated control plane: {e:#}"),
    }
}

/// A control plane stopped (and its state folder removed) when dropped; see [`isolated`].
pub struct Isolated(pub ControlPlane);

impl std::ops::Deref for Isolated {
    type Target = ControlPlane;
    fn deref(&self) -> &ControlPlane {
        &self.0
    }
}

impl std::ops::DerefMut for Isolated {
    fn deref_mut(&mut self) -> &mut ControlPlane {
        &mut self.0
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        self.0.stop();
        if std::env::var_os(KEEP_STATE_ENV).is_none() {
            let _ = std::fs::remove_dir_all(&self.0.dir);
        }
    }
}

/// Starts a control plane in `.state/tests/<name>` on free ports, watched by a watchdog.
fn start_watched(name: &str) -> Result<ControlPlane> {
    let bins = Bins::locate();
    let missing = bins.missing();
    assert!(
        missing.is_empty(),
        "control-plane binaries missing: {missing:?}; run `cargo xtask setup` first \
         (or set ${BIN_DIR_ENV} to a folder holding etcd, kube-apiserver, \
         kube-controller-manager, kube-scheduler and kubectl)"
    );
    let tests_dir = workspace_root().join(".state/tests");
    sweep_stale(&tests_dir, &bins);
    let dir = tests_dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let opts = Options {
        dir: dir.clone(),
        ports: Ports::free()?,
        unsafe_no_fsync: true,
        timeout: Duration::from_secs(180),
    };
    let started = Instant::now();
    let cp = ControlPlane::start_with(&bins, &opts, |pgid| spawn_watchdog(pgid, &dir))?;
    cp.write_pid_file()?;
    eprintln!(
        "control plane up in {:.1}s: KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        cp.kubeconfig.display()
    );
    Ok(cp)
}

/// Removes the state folders of test binaries that are gone (`cp-<pid>...`), stopping
/// whatever of theirs still runs: normally their watchdog did both.
fn sweep_stale(tests_dir: &Path, bins: &Bins) {
    let Ok(entries) = std::fs::read_dir(tests_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix("cp-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if Path::new(&format!("/proc/{owner}")).exists() {
            continue;
        }
        let layout = Layout { dir: entry.path() };
        let text = std::fs::read_to_string(layout.pid_file()).unwrap_or_default();
        let alive: Vec<u32> = text
            .lines()
            .rev()
            .filter_map(|l| l.split_once(' ')?.1.trim().parse().ok())
            .filter(|pid| bins.all().iter().any(|bin| runs(*pid, bin)))
            .collect();
        stop_pids(&alive, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// A shell that waits for this process to end, then kills the control plane's process
/// group and removes its state folder (unless `$PGWARDEN_KEEP_STATE` is set).
fn spawn_watchdog(pgid: u32, dir: &Path) -> Result<()> {
    let keep = std::env::var_os(KEEP_STATE_ENV).is_some();
    let script = r#"
        while kill -0 "$1" 2>/dev/null && [ -d "$3" ]; do sleep 0.5; done
        # An isolated control plane removes its folder when dropped: nothing left to do.
        [ -d "$3" ] || exit 0
        # Components in reverse start order (the API server before etcd), then the group.
        if [ -f "$3/pids" ]; then
            for pid in $(awk '{print $2}' "$3/pids" | tac); do
                kill -TERM "$pid" 2>/dev/null
                i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
            done
        fi
        kill -TERM "-$2" 2>/dev/null
        i=0; while kill -0 "-$2" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
        kill -KILL "-$2" 2>/dev/null
        [ "$4" = keep ] || rm -rf -- "$3"
    "#;
    Command::new("sh")
        .args(["-c", script, "watchdog"])
        .arg(std::process::id().to_string())
        .arg(pgid.to_string())
        .arg(dir)
        .arg(if keep { "keep" } else { "remove" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("cannot start the control-plane watchdog")?;
    Ok(())
}

/// The CRDs of `crds/yaml/`, applied once per test binary and Established.
pub const CRDS: [&str; 4] = [
    "clusters.postgresql.k8s.2ndq.io",
    "backups.postgresql.k8s.2ndq.io",
    "scheduledbackups.postgresql.k8s.2ndq.io",
    "reconcilepolicies.postgresql.k8s.2ndq.io",
];

/// [`shared`], with pgwarden's CRDs installed (`kubectl apply -f crds/yaml/`) and
/// Established.
pub fn with_crds() -> &'static ControlPlane {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let cp = shared();
    let installed = INSTALLED.get_or_init(|| {
        cp.install_crds()?;
        cp.install_operator_rbac()?;
        cp.install_agent_admission()
    });
    if let Err(e) = installed {
        panic!("cannot install the CRDs: {e}");
    }
    cp
}

impl ControlPlane {
    /// `kubectl apply -f crds/yaml/`, then waits until every CRD is Established; returns
    /// what `apply` printed.
    pub fn install_crds(&self) -> Result<String, String> {
        let dir = workspace_root().join("crds/yaml");
        let applied = self.kubectl(&["apply", "-f", &dir.display().to_string()])?;
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=120s"];
        let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
        args.extend(names.iter().map(String::as_str));
        self.kubectl(&args)?;
        self.wait_for_openapi()?;
        Ok(applied)
    }

    /// Established CRDs reach the OpenAPI document a moment later; `kubectl explain` and
    /// server-side apply need them there.
    fn wait_for_openapi(&self) -> Result<(), String> {
        let path = "/openapi/v3/apis/postgresql.k8s.2ndq.io/v1alpha1";
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let doc = self.kubectl(&["get", "--raw", path]).unwrap_or_default();
            let published =
                |kind: &&str| doc.contains(&format!("\"io.2ndq.k8s.postgresql.v1alpha1.{kind}\""));
            if KINDS.iter().all(published) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the CRDs' schemas never appeared in {path}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The kinds of [`CRDS`].
pub const KINDS: [&str; 4] = ["Cluster", "Backup", "ScheduledBackup", "ReconcilePolicy"];

/// A namespace of one test, deleted (without waiting) when dropped.
pub struct Namespace<'a> {
    pub name: String,
    pub cp: &'a ControlPlane,
}

static NAMESPACES: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// A fresh namespace named after `hint` (e.g. the test's name).
    pub fn namespace(&self, hint: &str) -> Namespace<'_> {
        let n = NAMESPACES.fetch_add(1, Ordering::Relaxed);
        let mut name: String = hint
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .take(50)
            .collect();
        name = format!("{}-{n}", name.trim_matches('-'));
        if let Err(e) = self.kubectl(&["create", "namespace", &name]) {
            panic!("cannot create namespace {name}: {e}");
        }
        Namespace { name, cp: self }
    }
}

impl Namespace<'_> {
    /// kubectl in this namespace.
    pub fn kubectl(&self, args: &[&str]) -> KubectlOutput {
        self.kubectl_with_input(args, None)
    }

    /// kubectl in this namespace, feeding `input` on stdin.
    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> KubectlOutput {
        let mut all = vec!["--namespace", &self.name];
        all.extend_from_slice(args);
        self.cp.kubectl_with_input(&all, input)
    }

    /// Pins the namespace's pods to `node` (the PodNodeSelector admission plugin merges the
    /// selector into every pod created afterwards).
    pub fn pin_to_node(&self, node: &str) -> Result<(), String> {
        let selector =
            format!("scheduler.alpha.kubernetes.io/node-selector=kubernetes.io/hostname={node}");
        self.cp
            .kubectl(&[
                "annotate",
                "namespace",
                &self.name,
                "--overwrite",
                &selector,
            ])
            .map(|_| ())
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_lines_become_writes() {
        let line = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","stage":"ResponseComplete","verb":"patch","user":{"username":"pgwarden-operator","groups":["system:authenticated"]},"objectRef":{"resource":"clusters","namespace":"steady","name":"postgresql-bkp","apiGroup":"postgresql.k8s.2ndq.io","apiVersion":"v1alpha1","subresource":"status"},"responseStatus":{"metadata":{},"code":200}}"#;
        assert_eq!(
            parse_audit_line(line),
            Some(AuditedRequest {
                user: "pgwarden-operator".into(),
                verb: "patch".into(),
                resource: "clusters/status".into(),
                namespace: "steady".into(),
                name: "postgresql-bkp".into(),
                code: 200,
            })
        );
        assert!(parse_audit_line(line).unwrap().is_write());
        let watch = line.replace("\"verb\":\"patch\"", "\"verb\":\"watch\"");
        assert!(!parse_audit_line(&watch).unwrap().is_write());
        assert_eq!(parse_audit_line("not json"), None);
    }

    #[test]
    fn the_shipped_cluster_role_is_found() {
        let text = std::fs::read_to_string(workspace_root().join("deploy/operator.yaml")).unwrap();
        let role = operator_cluster_role(&text).unwrap();
        assert!(role.contains("name: pgwarden-operator"), "{role}");
        assert!(!role.contains("ClusterRoleBinding"), "{role}");
        assert!(role.contains("clusters/status"), "{role}");
    }
}
