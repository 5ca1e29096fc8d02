//! The local node (a stand-in for a kubelet) against a real control plane: pods bound by the
//! real scheduler run as local processes with their env, volumes, address, readiness,
//! restarts and deletion reported as a kubelet would.
//!
//! Needs the control-plane binaries: `cargo xtask setup`.

use std::sync::OnceLock;
use std::time::Duration;

use pgwarden_tests::controlplane::{ControlPlane, Namespace, shared};
use pgwarden_tests::datapath::wait_for;
use pgwarden_tests::localnode::{LocalNode, Options};
use serde_json::Value;

/// One node for this test binary, on the shared control plane (stopped with the binary:
/// its processes by their watchdogs).
fn node() -> &'static ControlPlane {
    static NODE: OnceLock<std::sync::Mutex<LocalNode>> = OnceLock::new();
    let cp = shared();
    NODE.get_or_init(|| {
        let state = cp.dir.join("localnode");
        let mut opts = Options::new(&cp.kubeconfig, &state);
        opts.name = "localnode-test".into();
        opts.subnet = 100 + (std::process::id() % 100) as u8;
        opts.env = vec![("POD_DIR".into(), "{podDir}".into())];
        // Containers naming the project's images run from them (runc); `image: none` on the host.
        opts.images = pgwarden_tests::runc::images_from_env().unwrap_or_default();
        std::sync::Mutex::new(LocalNode::start(opts).expect("local node"))
    });
    cp
}

const TIMEOUT: Duration = Duration::from_secs(90);
const EVERY: Duration = Duration::from_millis(300);

fn pod_json(ns: &Namespace<'_>, name: &str) -> Option<Value> {
    let out = ns
        .kubectl(&["get", "pod", name, "-o", "json"])
        .into_result()
        .ok()?;
    serde_json::from_str(&out).ok()
}

fn wait_pod(ns: &Namespace<'_>, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let got = wait_for(TIMEOUT, EVERY, || {
        let pod = pod_json(ns, name)?;
        last = pod.clone();
        ok(&pod).then_some(pod)
    });
    got.unwrap_or_else(|| panic!("pod {name}: {what} never happened; last seen: {last:#}"))
}

/// `kubectl apply`, waiting for the namespace's `default` ServiceAccount (made by the
/// controller-manager shortly after the namespace) that pod admission needs.
fn apply(ns: &Namespace<'_>, yaml: &str) {
    let mut last = String::new();
    let applied = wait_for(TIMEOUT, EVERY, || {
        match ns
            .kubectl_with_input(&["apply", "-f", "-"], Some(yaml))
            .into_result()
        {
            Ok(_) => Some(()),
            Err(e) if e.contains("serviceaccount \"default\" not found") => {
                last = e;
                None
            }
            Err(e) => panic!("kubectl apply: {e}"),
        }
    });
    assert!(applied.is_some(), "kubectl apply: {last}");
}

fn condition(pod: &Value, kind: &str) -> String {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == kind)
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

const APP: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {PASSWORD: s3cr3t, TOKEN: t0k3n}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello, mode: fast}
---
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: none
    # `$$$$`: a kubelet expands `$(VAR)` in args and makes `$$` a `$`, so the shell sees `$$`.
    command: [sh, -c]
    args:
    - |
      echo "$PASSWORD $GREETING $MY_NAME $MY_NS $MY_IP $CFG_mode" > "$OUT/env.txt"
      cat "$CFG/greeting" > "$OUT/copy.txt"
      echo $$$$ > "$OUT/pid"
      exec sleep 1000
    env:
    - {name: OUT, value: /data}
    - {name: CFG, value: /etc/app}
    - name: PASSWORD
      valueFrom: {secretKeyRef: {name: creds, key: PASSWORD}}
    - name: GREETING
      valueFrom: {configMapKeyRef: {name: settings, key: greeting}}
    - name: MY_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: MY_NS
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
    - name: MY_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    envFrom:
    - {configMapRef: {name: settings}, prefix: CFG_}
    readinessProbe:
      exec: {command: [sh, -c, 'test -s "$OUT/copy.txt"']}
      periodSeconds: 1
    volumeMounts:
    - {name: scratch, mountPath: /data}
    - {name: cfg, mountPath: /etc/app}
    - {name: secret, mountPath: /etc/secret}
  volumes:
  - {name: scratch, emptyDir: {}}
  - {name: cfg, configMap: {name: settings}}
  - {name: secret, secret: {secretName: creds}}
"#;

#[test]
fn a_pod_runs_with_its_env_volumes_address_and_readiness_then_stops_when_deleted() {
    let cp = node();
    let ns = cp.namespace("localnode-app");
    apply(&ns, APP);
    let pod = wait_pod(&ns, "app", "Running and Ready", |p| {
        p["status"]["phase"] == "Running" && condition(p, "Ready") == "True"
    });
    assert_eq!(
        pod["spec"]["nodeName"], "localnode-test",
        "bound by the scheduler"
    );
    for kind in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert_eq!(condition(&pod, kind), "True", "{kind}: {pod:#}");
    }
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ip.starts_with("127."), "podIP on loopback: {ip}");
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs:#}");

    // The emptyDir's host folder holds what the container wrote through /data.
    let scratch = pod_dir(&ns, &pod).join("volumes/scratch");
    let env = std::fs::read_to_string(scratch.join("env.txt")).expect("env.txt");
    assert_eq!(
        env.trim(),
        format!("s3cr3t hello app {} {ip} fast", ns.name),
        "env from Secret, ConfigMap, fieldRef and envFrom"
    );
    let copy = std::fs::read_to_string(scratch.join("copy.txt")).expect("copy.txt");
    assert_eq!(copy.trim(), "hello", "ConfigMap volume mounted");
    let secret_dir = pod_dir(&ns, &pod).join("volumes/secret");
    assert_eq!(
        std::fs::read_to_string(secret_dir.join("TOKEN")).unwrap_or_default(),
        "t0k3n",
        "Secret volume written"
    );

    // ConfigMap volumes follow the object.
    ns.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-p",
        r#"{"data":{"greeting":"bonjour"}}"#,
    ])
    .into_result()
    .expect("patch");
    let cfg = pod_dir(&ns, &pod).join("volumes/cfg/greeting");
    let synced = wait_for(TIMEOUT, EVERY, || {
        (std::fs::read_to_string(&cfg).ok()? == "bonjour").then_some(())
    });
    assert!(
        synced.is_some(),
        "the ConfigMap volume was not kept in sync"
    );

    // Deletion stops the process and removes the pod.
    let pid: u32 = std::fs::read_to_string(scratch.join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("pid");
    assert!(alive(pid), "the container process runs");
    ns.kubectl(&["delete", "pod", "app", "--wait=false"])
        .into_result()
        .expect("delete");
    let gone = wait_for(TIMEOUT, EVERY, || {
        pod_json(&ns, "app").is_none().then_some(())
    });
    assert!(gone.is_some(), "the deleted pod was never finalized");
    assert!(!alive(pid), "the process of the deleted pod still runs");
}

#[test]
fn a_container_that_exits_is_restarted_and_counted() {
    let cp = node();
    let ns = cp.namespace("localnode-restart");
    apply(
        &ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  containers:
  - {name: main, image: none, command: [sh, -c, 'sleep 0.2; exit 3']}
"#,
    );
    let pod = wait_pod(&ns, "flaky", "two restarts", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0)
            >= 2
    });
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["lastState"]["terminated"]["exitCode"], 3, "{cs:#}");
    assert_eq!(cs["lastState"]["terminated"]["reason"], "Error", "{cs:#}");
}

#[test]
fn a_pod_that_completes_with_restart_policy_never_succeeds() {
    let cp = node();
    let ns = cp.namespace("localnode-job");
    apply(
        &ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: once}
spec:
  restartPolicy: Never
  containers:
  - {name: main, image: none, command: [sh, -c, 'exit 0']}
"#,
    );
    let pod = wait_pod(&ns, "once", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let cs = &pod["status"]["containerStatuses"][0];
    assert_eq!(cs["restartCount"], 0, "{cs:#}");
    assert_eq!(cs["state"]["terminated"]["exitCode"], 0, "{cs:#}");
}

#[test]
fn a_claim_gets_a_volume_that_outlives_its_pod() {
    let cp = node();
    let ns = cp.namespace("localnode-claim");
    let manifest = r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: none
    command: [sh, -c, 'echo $(( $(cat $D/count 2>/dev/null || echo 0) + 1 )) > $D/count.new && mv $D/count.new $D/count && exec sleep 1000']
    env: [{name: D, value: /pv}]
    volumeMounts: [{name: data, mountPath: /pv}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: data}}]
"#;
    apply(&ns, manifest);
    wait_pod(&ns, "writer", "Running", |p| {
        condition(p, "Ready") == "True"
    });
    ns.kubectl(&["delete", "pod", "writer", "--wait=true", "--timeout=60s"])
        .into_result()
        .expect("delete");
    apply(&ns, manifest);
    wait_pod(&ns, "writer", "Running again", |p| {
        condition(p, "Ready") == "True"
    });
    let pv = cp
        .kubectl(&[
            "get",
            "pvc",
            "-n",
            &ns.name,
            "data",
            "-o",
            "jsonpath={.spec.volumeName}",
        ])
        .expect("pvc");
    let path = cp
        .kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"])
        .expect("pv");
    let count = wait_for(TIMEOUT, EVERY, || {
        let c = std::fs::read_to_string(std::path::Path::new(&path).join("count")).ok()?;
        (c.trim() == "2").then_some(c)
    });
    assert!(
        count.is_some(),
        "the claim's folder did not survive the pod ({path})"
    );
}

fn pod_dir(ns: &Namespace<'_>, pod: &Value) -> std::path::PathBuf {
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    ns.cp.dir.join("localnode/pods").join(uid)
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// A pod talks to the API server as its ServiceAccount, with a token the node got from the
/// TokenRequest API (bound to the pod): `kubectl auth whoami` in the pod names the account,
/// and what its Role does not grant is forbidden.
#[test]
fn a_pod_acts_as_its_service_account() {
    let cp = node();
    let ns = cp.namespace("localnode-sa");
    let kubectl = cp.bins.kubectl.display().to_string();
    let yaml = format!(
        r#"
apiVersion: v1
kind: ServiceAccount
metadata: {{name: reader}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-configmaps}}
rules: [{{apiGroups: [""], resources: [configmaps], verbs: [get, list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-configmaps}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: who}}
spec:
  serviceAccountName: reader
  restartPolicy: Never
  containers:
  - name: main
    image: none
    command: [sh, -c]
    args:
    - |
      {kubectl} auth whoami -o jsonpath='{{.status.userInfo.username}}' > "$POD_DIR/whoami.txt" 2>&1
      {kubectl} get configmaps -o name > "$POD_DIR/configmaps.txt" 2>&1
      {kubectl} get secrets > "$POD_DIR/secrets.txt" 2>&1
      echo done > "$POD_DIR/done"
"#,
        ns = ns.name
    );
    apply(&ns, &yaml);
    let pod = wait_pod(&ns, "who", "Succeeded", |p| {
        p["status"]["phase"] == "Succeeded"
    });
    let dir = pod_dir(&ns, &pod);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert_eq!(read("done").trim(), "done");
    assert_eq!(
        read("whoami.txt"),
        format!("system:serviceaccount:{}:reader", ns.name),
        "the pod's identity"
    );
    assert!(
        read("configmaps.txt").contains("configmap/kube-root-ca.crt"),
        "what the Role grants: {}",
        read("configmaps.txt")
    );
    assert!(
        read("secrets.txt").contains("Forbidden")
            && read("secrets.txt").contains(&format!(
                "system:serviceaccount:{}:reader\" cannot list resource \"secrets\"",
                ns.name
            )),
        "what it does not: {}",
        read("secrets.txt")
    );
    let kubeconfig = read("kubeconfig");
    assert!(kubeconfig.contains("tokenFile: "), "{kubeconfig}");
    let token_file = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("tokenFile: "))
        .unwrap();
    assert!(
        std::fs::metadata(token_file).is_ok_and(|m| m.len() > 100),
        "the projected token is written"
    );
}

/// A pod from the instance image (runc): the image's user (999) owns what it writes on its
/// claim, the image's PATH under the pod's env, in-cluster configuration to the API server
/// as its ServiceAccount, the readiness probe inside the container (it tests paths only the
/// container has); a new pod on the claim finds what the first wrote; deletion leaves no runc
/// container.
#[test]
fn a_pod_from_the_instance_image_runs_with_runc_as_its_user_with_its_claim() {
    pgwarden_tests::runc::image_layout("PGWARDEN_INSTANCE_IMAGE");
    let cp = node();
    let ns = cp.namespace("localnode-runc");
    let manifest = format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: img}}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: main
    image: pgwarden-instance:{tag}
    command: [sh, -c]
    args:
    - |
      echo run >> /data/runs
      id -u > /data/uid
      echo "$GREETING $PATH ${{KUBECONFIG:-no-kubeconfig}}" > /data/env
      python3 /data/whoami.py > /data/whoami 2>&1
      touch /data/started
      exec sleep 1000
    env:
    - {{name: GREETING, value: hello}}
    readinessProbe:
      exec: {{command: [sh, -c, 'test "$(id -u)" = 999 && test -e /data/started && test -x /usr/local/bin/pgwarden-entrypoint']}}
      periodSeconds: 1
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#,
        tag = pgwarden_tests::runc::TAG
    );
    // Asks the API server who the pod is, as in-cluster configuration would reach it.
    let whoami = r#"import json, os, ssl, urllib.request
d = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
req = urllib.request.Request(url, data=body.encode(), method="POST", headers={
    "Authorization": "Bearer " + open(d + "/token").read(), "Content-Type": "application/json"})
ctx = ssl.create_default_context(cafile=d + "/ca.crt")
print(json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]["username"])
"#;
    // The claim first, with the script on it, then the pod.
    let claim_only = manifest.split("---").next().expect("the claim");
    apply(&ns, claim_only);
    let claim = claim_path(cp, &ns);
    std::fs::write(claim.join("whoami.py"), whoami).expect("whoami.py");
    apply(&ns, &manifest);
    let started = std::time::Instant::now();
    let pod = wait_pod(&ns, "img", "Ready", |p| condition(p, "Ready") == "True");
    eprintln!(
        "runc pod: Ready {:.1?} after its claim was bound",
        started.elapsed()
    );
    let id = container_id(&pod);
    let read = |f: &str| std::fs::read_to_string(claim.join(f)).unwrap_or_default();
    assert_eq!(read("uid").trim(), "999", "the image's user");
    assert_owner(&claim.join("uid"), 999);
    assert_eq!(
        read("env").trim(),
        "hello /opt/barman/bin:/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin no-kubeconfig",
        "the pod's env over the image's, no kubeconfig"
    );
    assert_eq!(
        read("whoami").trim(),
        format!("system:serviceaccount:{}:default", ns.name),
        "in-cluster configuration"
    );
    assert!(runc_list().contains(&id), "runc runs {id}");

    ns.kubectl(&["delete", "pod", "img", "--wait=true", "--timeout=60s"])
        .into_result()
        .expect("delete");
    assert!(
        !runc_list().contains(&id),
        "no runc container left: {}",
        runc_list()
    );
    apply(&ns, &manifest);
    let again = wait_pod(&ns, "img", "Ready again", |p| {
        condition(p, "Ready") == "True"
    });
    assert_eq!(
        read("runs"),
        "run\nrun\n",
        "the claim kept the first pod's writes"
    );
    let again = container_id(&again);
    assert!(runc_list().contains(&again), "runc runs {again}");
    ns.kubectl(&["delete", "pod", "img", "--wait=true", "--timeout=60s"])
        .into_result()
        .expect("delete");
    assert!(
        !runc_list().contains(&again),
        "{again} left: {}",
        runc_list()
    );
}

/// The runc id of a pod's first container (`runc://<id>`).
fn container_id(pod: &Value) -> String {
    let cs = &pod["status"]["containerStatuses"][0];
    let id = cs["containerID"].as_str().unwrap_or_default();
    assert!(id.starts_with("runc://pgw-"), "a runc container: {cs:#}");
    id.trim_start_matches("runc://").to_string()
}

/// The agent from the instance image as the SDK's default pod would run it if it set
/// `runAsUser: 0` (its capabilities, no privilege escalation): it starts PostgreSQL as
/// `postgres` (999) on the claim, its readiness probe (`pgwarden instance ready`) passes
/// inside the container, and both show on the host with their uids (host PID namespace).
#[test]
fn the_instance_image_runs_the_agent_as_root_and_postgres_as_postgres() {
    pgwarden_tests::runc::image_layout("PGWARDEN_INSTANCE_IMAGE");
    let cp = node();
    let ns = cp.namespace("localnode-agent");
    let manifest = format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: agent}}
spec:
  terminationGracePeriodSeconds: 10
  containers:
  - name: postgres
    image: pgwarden-instance:{tag}
    command: [pgwarden, instance, run]
    env:
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    - {{name: PGWARDEN_LISTEN_ADDRESSES, value: $(POD_IP)}}
    securityContext:
      runAsUser: 0
      allowPrivilegeEscalation: false
      capabilities: {{drop: [ALL], add: [CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID]}}
    readinessProbe:
      exec: {{command: [pgwarden, instance, ready]}}
      periodSeconds: 2
      timeoutSeconds: 5
    volumeMounts: [{{name: data, mountPath: /var/lib/postgresql/data}}]
  volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
"#,
        tag = pgwarden_tests::runc::TAG
    );
    apply(&ns, &manifest);
    let started = std::time::Instant::now();
    let pod = wait_pod(&ns, "agent", "Ready", |p| condition(p, "Ready") == "True");
    eprintln!(
        "agent pod from the image: Ready in {:.1?}",
        started.elapsed()
    );
    let claim = claim_path(cp, &ns);
    let pid_file = std::fs::read_to_string(claim.join("pgdata/postmaster.pid")).expect("pid");
    let postmaster: u32 = pid_file.lines().next().unwrap().trim().parse().unwrap();
    assert_eq!(uid_of(postmaster), 999, "PostgreSQL runs as postgres");
    assert_owner(&claim.join("pgdata"), 999);
    let id = container_id(&pod);
    let state = std::process::Command::new("runc")
        .args(["state", &id])
        .output()
        .expect("runc state");
    let state: Value = serde_json::from_slice(&state.stdout).expect("runc state's JSON");
    let agent = state["pid"]
        .as_u64()
        .expect("the container's first process") as u32;
    assert_eq!(uid_of(agent), 0, "the agent runs as root (pid {agent})");
    ns.kubectl(&["delete", "pod", "agent", "--wait=true", "--timeout=60s"])
        .into_result()
        .expect("delete");
    assert!(!alive(postmaster), "PostgreSQL stopped with its pod");
    assert!(!runc_list().contains(&id), "{id} left: {}", runc_list());
}

/// The real uid of process `pid`.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The host folder of claim `data` in `ns`, once bound.
fn claim_path(cp: &ControlPlane, ns: &Namespace<'_>) -> std::path::PathBuf {
    let pv = wait_for(TIMEOUT, EVERY, || {
        let args: [&str; 7] = [
            "get",
            "pvc",
            "-n",
            &ns.name,
            "data",
            "-o",
            "jsonpath={.spec.volumeName}",
        ];
        cp.kubectl(&args).ok().filter(|v| !v.is_empty())
    })
    .expect("the claim is bound");
    let path = cp
        .kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.hostPath.path}"])
        .expect("pv");
    let path = std::path::PathBuf::from(path);
    std::fs::create_dir_all(&path).expect("claim folder");
    path
}

fn runc_list() -> String {
    let out = std::process::Command::new("runc")
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_owner(path: &std::path::Path, uid: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(meta.uid(), uid, "owner of {}", path.display());
}
