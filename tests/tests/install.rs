//! The install as shipped (issue 15 item 3), in the sandbox: `kubectl apply -f crds/yaml/ -f
//! deploy/` on a fresh API server (nothing else installed: no RBAC for a test user, no
//! admission policy of the harness), then the seed's Secret, Cluster and Backup. The local node
//! runs the operator image with runc, so the operator runs *in* the sandbox as the pods of
//! deploy/operator.yaml's Deployment, from `pgwarden-operator:<version>` (the tag the manifest
//! names), as uid 65532, with its ServiceAccount's token (in-cluster configuration: no
//! kubeconfig, no client certificate); one replica leads through the Lease and decides with
//! the policy built into the binary; the seed's Cluster becomes an instance pod, and the
//! demo's checks pass: the instance is Ready, WAL is archived, the Backup completes. Then the
//! leader's pod is deleted and the other replica takes the Lease over.
//!
//! The instance pod runs from `pgwarden-instance:<version>` too, as in every other end-to-end
//! test, and the test checks its agent sees that image's root (`$PGWARDEN_INSTANCE_PODS=host`:
//! from the host's binaries, tests/src/world.rs).
//!
//! A broken install fails here: a wrong tag leaves the operator pods without an image (the
//! node cannot run them: the wait fails at once naming the container's state; checked: 15 s),
//! a missing RBAC verb stops the operator from leading or from making the Cluster's objects
//! (the waits fail naming what was last seen, with the operator's log).
//!
//! Slow (minutes): two operators (debug builds compiling the default policy) and an instance
//! on a shared machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::{ControlPlane, Namespace, shared, workspace_root};
use pgwarden_tests::datapath::{S3Server, deps, removed_unless_kept, shared_tempdir};
use pgwarden_tests::localnode::{LocalNode, Options};
use pgwarden_tests::operator::{apply_when_admitted, condition, get, pod_is_ready, seed};
use pgwarden_tests::runc::{TAG, image_layout};
use pgwarden_tests::world::INSTANCE_PODS_ENV;
use serde_json::Value;

/// The namespace, Deployment, Lease and label of deploy/operator.yaml.
const SYSTEM: &str = "pgwarden-system";
const LEASE: &str = "pgwarden-operator";
const SELECTOR: &str = "app=pgwarden-operator";
/// The uids the images run as (xtask/src/image.rs).
const OPERATOR_UID: u32 = 65532;
const BUCKET: &str = "pgwarden-install";
/// Two debug operators compile the default policy at once on a busy machine.
const OPERATOR_WAIT: Duration = Duration::from_secs(300);
/// The seed's instance up, WAL archived and the Backup completed (the demo allows as much).
const SEED_WAIT: Duration = Duration::from_secs(300);

#[test]
fn the_shipped_install_runs_the_operator_as_a_pod_that_reconciles_the_seed() {
    let cp = shared();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let dir = shared_tempdir("pgw-install-");
    let node_dir = dir.path().join("node");
    // Dropped after the node (declared before it), also when a wait panics.
    let _dir = removed_unless_kept(dir);
    let node = start_node(cp, &node_dir, &s3.credentials.region);

    let t = Instant::now();
    let applied = install(cp);
    eprintln!("installed in {:.1?}:\n{applied}", t.elapsed());
    let leader = wait_leader(cp, OPERATOR_WAIT);
    eprintln!("{leader} leads, {:.1?} after the install", t.elapsed());
    operator_runs_from_its_image(cp, &leader);
    replicas_agree_on_the_leader(cp, &leader);

    let ns = cp.namespace("seed");
    let t = Instant::now();
    apply_when_admitted(&ns, &seed_manifests(&s3));
    let instance = wait_seed(&ns, SEED_WAIT);
    eprintln!(
        "seed: instance ready, WAL archived, backup completed in {:.1?}",
        t.elapsed()
    );
    if instances_from_image() {
        instance_runs_from_its_image(&ns, &instance);
    } else {
        eprintln!("the instance pod ran from the host's binaries (${INSTANCE_PODS_ENV} unset)");
    }
    let cluster = get(&ns, "cluster", "postgresql-bkp").expect("the seed's Cluster");
    let policy = condition(&cluster, "PolicyApplied");
    assert_eq!(
        policy.as_ref().map(|c| c.0.as_str()),
        Some("True"),
        "the default policy decides the seed's Cluster: {policy:?}"
    );

    // The standby takes over when the leader's pod goes.
    let t = Instant::now();
    if let Err(e) = cp.kubectl(&["delete", "pod", "-n", SYSTEM, &leader, "--wait=false"]) {
        panic!("cannot delete the leader's pod: {e}");
    }
    let next = wait_for(cp, "another replica leads", OPERATOR_WAIT, || {
        lease_holder(cp).filter(|h| *h != leader && ready_pod(cp, h))
    });
    eprintln!("{next} took over in {:.1?}", t.elapsed());
    drop(node);
}

/// Whether instance pods run from the instance image too: yes, as in the other end-to-end
/// tests, unless `$PGWARDEN_INSTANCE_PODS=host` (tests/src/world.rs). The operator's pods
/// always run from the operator image: that is the install.
fn instances_from_image() -> bool {
    !std::env::var(INSTANCE_PODS_ENV).is_ok_and(|v| v == "host")
}

/// A local node running the operator image with runc (the reference deploy/ names), and the
/// instance image too when [`instances_from_image`], else instance pods from the host's
/// binaries.
fn start_node(cp: &ControlPlane, dir: &Path, region: &str) -> LocalNode {
    let operator = (
        format!("pgwarden-operator:{TAG}"),
        image_layout("PGWARDEN_OPERATOR_IMAGE"),
    );
    let opts = if instances_from_image() {
        let instance = (
            format!("pgwarden-instance:{TAG}"),
            image_layout("PGWARDEN_INSTANCE_IMAGE"),
        );
        let images = vec![operator, instance];
        Options::for_instance_images(&cp.kubeconfig, dir, images, region)
    } else {
        let programs = deps().host_programs();
        let mut opts = Options::for_instances(&cp.kubeconfig, dir, &programs, region);
        opts.images = vec![operator];
        opts
    };
    LocalNode::start(opts).expect("local node")
}

/// `kubectl apply -f crds/yaml/ -f deploy/`, as the README says; what it printed.
fn install(cp: &ControlPlane) -> String {
    let root = workspace_root();
    let (crds, deploy) = (root.join("crds/yaml"), root.join("deploy"));
    let args = ["apply", "-f", &path(&crds), "-f", &path(&deploy)];
    cp.kubectl(&args)
        .unwrap_or_else(|e| panic!("kubectl apply -f crds/yaml/ -f deploy/ failed: {e}"))
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// The operator's pods (deploy/operator.yaml's Deployment).
fn operator_pods(cp: &ControlPlane) -> Vec<Value> {
    let args = ["get", "pods", "-n", SYSTEM, "-l", SELECTOR, "-o", "json"];
    let list: Value = cp
        .kubectl(&args)
        .ok()
        .and_then(|out| serde_json::from_str(&out).ok())
        .unwrap_or_default();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn ready_pod(cp: &ControlPlane, name: &str) -> bool {
    operator_pods(cp)
        .iter()
        .any(|p| p["metadata"]["name"] == name && pod_is_ready(p))
}

/// The Lease's holder, as the operator writes it (its pod's name, from `POD_NAME`).
fn lease_holder(cp: &ControlPlane) -> Option<String> {
    let path = "jsonpath={.spec.holderIdentity}";
    let out = cp.kubectl(&["get", "lease", "-n", SYSTEM, LEASE, "-o", path]);
    out.ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Why a container will never start, when its state says so (no image to run).
fn never_starts(pod: &Value) -> Option<String> {
    const FATAL: [&str; 5] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "NoCommand",
    ];
    let statuses = pod["status"]["containerStatuses"].as_array()?;
    statuses.iter().find_map(|s| {
        let waiting = &s["state"]["waiting"];
        let reason = waiting["reason"].as_str()?;
        FATAL.contains(&reason).then(|| {
            let image = &pod["spec"]["containers"][0]["image"];
            format!("{reason}: {} (image {image})", waiting["message"])
        })
    })
}

/// Polls `f` every second until `Some`; panics after `timeout` with what the operator's pods
/// showed and their logs, or at once when a pod can never start.
fn wait_for<T>(
    cp: &ControlPlane,
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        let pods = operator_pods(cp);
        if let Some(why) = pods.iter().find_map(never_starts) {
            panic!("{what}: an operator pod cannot start: {why}");
        }
        if Instant::now() > deadline {
            panic!(
                "{what}: not within {timeout:?}\n{}",
                operator_state(cp, &pods)
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The operator pods' states and log tails, for a failure message.
fn operator_state(cp: &ControlPlane, pods: &[Value]) -> String {
    let mut out = format!("lease holder: {:?}\n", lease_holder(cp));
    for pod in pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let log = cp
            .kubectl(&["logs", "-n", SYSTEM, name, "--tail=30"])
            .unwrap_or_else(|e| e);
        out += &format!(
            "pod {name}: {}\n{log}\n",
            pod["status"]["containerStatuses"]
        );
    }
    out
}

/// Waits until a Ready operator pod holds the Lease; its name.
fn wait_leader(cp: &ControlPlane, timeout: Duration) -> String {
    wait_for(cp, "an operator pod leads", timeout, || {
        lease_holder(cp).filter(|h| ready_pod(cp, h))
    })
}

/// The operator pod runs `pgwarden operator` from the operator image (its root is the
/// image's rootfs, not the host's), as the image's user, configured in-cluster (the Kubernetes
/// Service variables, no KUBECONFIG), with the policy built into the binary.
fn operator_runs_from_its_image(cp: &ControlPlane, pod: &str) {
    let spec = operator_pods(cp)
        .into_iter()
        .find(|p| p["metadata"]["name"] == pod)
        .expect("the leader's pod");
    assert_eq!(
        spec["spec"]["containers"][0]["image"].as_str(),
        Some(format!("pgwarden-operator:{TAG}").as_str()),
        "deploy/operator.yaml names the operator image of this version"
    );
    let pid = container_process(SYSTEM, pod, &["operator"])
        .unwrap_or_else(|| panic!("no `pgwarden operator` process of pod {pod}"));
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    assert!(
        passwd.contains(&format!("nonroot:x:{OPERATOR_UID}:")) && !passwd.contains("postgres"),
        "pid {pid} does not see the operator image's /etc/passwd: {passwd:?}"
    );
    assert!(
        root.join("usr/share/pgwarden/policies/default.wasm")
            .is_file()
    );
    assert_eq!(uid_of(pid), Some(OPERATOR_UID), "the image's user");
    let env = environ(pid);
    assert!(
        env.iter()
            .any(|v| v.starts_with("KUBERNETES_SERVICE_HOST=")),
        "no in-cluster configuration: {env:?}"
    );
    assert!(
        !env.iter().any(|v| v.starts_with("KUBECONFIG=")),
        "the operator pod must reach the API server in-cluster: {env:?}"
    );
    let log = cp
        .kubectl(&["logs", "-n", SYSTEM, pod])
        .expect("the operator's log");
    assert!(
        log.contains("(built in: policies/default)"),
        "the operator loads the policy built into it:\n{log}"
    );
}

/// Every replica is Ready (a standby too: /readyz is contact with the API server) and only
/// the Lease's holder says on `/leader` that it leads. (Not through the API server's pod proxy
/// as the README suggests for a real cluster: this API server refuses to proxy to loopback
/// addresses, which the local node's pod addresses are: "address not allowed".)
fn replicas_agree_on_the_leader(cp: &ControlPlane, leader: &str) {
    let pods = wait_for(cp, "both replicas are ready", OPERATOR_WAIT, || {
        let pods = operator_pods(cp);
        (pods.len() == 2 && pods.iter().all(pod_is_ready)).then_some(pods)
    });
    for pod in &pods {
        let name = pod["metadata"]["name"].as_str().unwrap_or_default();
        let ip = pod["status"]["podIP"].as_str().expect("podIP");
        let code = http_status(ip, 8080, "/leader");
        let leads = name == leader;
        assert_eq!(
            code == Some(200),
            leads,
            "pod {name} at {ip}: /leader answered {code:?}; the Lease names {leader}"
        );
    }
}

/// The seed's manifests (examples/seed/), verbatim but for what a store needs: the bucket and
/// endpoint (MinIO) in the Cluster, the generated key in the Secret.
fn seed_manifests(s3: &S3Server) -> String {
    let read = |f: &str| std::fs::read_to_string(seed(f)).expect("examples/seed");
    let c = &s3.credentials;
    let secret = read("secret.yaml")
        .replace("<access key here>", &c.access_key_id)
        .replace("<secret key here>", &c.secret_access_key);
    let destination = "destinationPath: \"s3://BUCKET_NAME/path/to/folder\"";
    let cluster = read("cluster.yaml");
    assert!(
        cluster.contains(destination),
        "examples/seed/cluster.yaml changed"
    );
    let cluster = cluster.replace(
        destination,
        &format!(
            "destinationPath: \"s3://{BUCKET}/postgresql-bkp\"\n    endpointURL: \"{}\"",
            s3.endpoint()
        ),
    );
    format!("{secret}\n---\n{cluster}\n---\n{}", read("backup.yaml"))
}

/// Waits for the demo's checks: instance 1 Ready, a WAL file archived, the Backup completed;
/// returns the instance pod.
fn wait_seed(ns: &Namespace<'_>, timeout: Duration) -> Value {
    let (start, mut last) = (Instant::now(), String::new());
    loop {
        let pod = get(ns, "pod", "postgresql-bkp-1");
        let cluster = get(ns, "cluster", "postgresql-bkp").unwrap_or_default();
        let backup = get(ns, "backup", "backup-example").unwrap_or_default();
        let archived = cluster["status"]["archive"]["archivedCount"]
            .as_i64()
            .unwrap_or(0);
        let phase = backup["status"]["phase"]
            .as_str()
            .unwrap_or("-")
            .to_string();
        let ready = pod.as_ref().is_some_and(pod_is_ready);
        let line = format!("instance ready: {ready}, WAL archived: {archived}, backup: {phase}");
        if line != last {
            eprintln!("[{:>4.0?}] {line}", start.elapsed());
            last = line;
        }
        assert_ne!(
            phase, "failed",
            "backup-example failed: {}",
            backup["status"]
        );
        if let (true, true, "completed", Some(pod)) = (ready, archived > 0, phase.as_str(), pod) {
            return pod;
        }
        if start.elapsed() > timeout {
            let pod = get(ns, "pod", "postgresql-bkp-1").unwrap_or_default();
            let log = ns.kubectl(&["logs", "postgresql-bkp-1", "--tail=20"]);
            panic!(
                "the seed: {last} after {timeout:?}\ninstance pod status: {}\nCluster status: {}\ninstance log:\n{}{}",
                pod["status"], cluster["status"], log.stdout, log.stderr
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The instance pod runs the instance image: the SDK's default reference, and the agent's
/// process sees that image's root (PostgreSQL, barman's venv, the entrypoint).
fn instance_runs_from_its_image(ns: &Namespace<'_>, pod: &Value) {
    assert_eq!(
        pod["spec"]["containers"][0]["image"].as_str(),
        Some(format!("pgwarden-instance:{TAG}").as_str()),
    );
    let pid = container_process(&ns.name, "postgresql-bkp-1", &["instance", "run"])
        .expect("the instance agent's process");
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    for inside in [
        "usr/local/bin/pgwarden-entrypoint",
        "opt/barman/bin/barman-cloud-wal-archive",
        "usr/lib/postgresql/15/bin/postgres",
    ] {
        assert!(
            root.join(inside).exists(),
            "pid {pid} (the agent) has no /{inside}: not the instance image's root"
        );
    }
}

/// The process of pod `namespace/pod` running `pgwarden <args...>`, told apart by the env
/// the manifests give it (`POD_NAME`, `POD_NAMESPACE`).
fn container_process(namespace: &str, pod: &str, args: &[&str]) -> Option<u32> {
    let want = [
        format!("POD_NAME={pod}"),
        format!("POD_NAMESPACE={namespace}"),
    ];
    let procs = std::fs::read_dir("/proc").ok()?.flatten();
    procs
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            let argv = words(&format!("/proc/{pid}/cmdline"));
            let runs = argv.first().is_some_and(|a| a.ends_with("pgwarden"))
                && argv.get(1..=args.len()).is_some_and(|a| a == args);
            runs && want.iter().all(|w| environ(*pid).contains(w))
        })
}

fn environ(pid: u32) -> Vec<String> {
    words(&format!("/proc/{pid}/environ"))
}

fn words(path: &str) -> Vec<String> {
    let raw = std::fs::read(path).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// The real uid of a process.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The HTTP status of `GET path` at `ip:port`, or `None` if it did not answer.
fn http_status(ip: &str, port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr = format!("{ip}:{port}").parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    String::from_utf8_lossy(&head[9..12]).parse().ok()
}
