//! The demo as an end-to-end test: `cargo xtask demo --once` (set-up, control plane, MinIO,
//! the local node, CRDs, the operator, the seed's Secret, Cluster and Backup, a
//! ScheduledBackup, a Cluster recovered from the Backup) must exit 0, having shown WAL
//! archived, the Backups completed and the restored rows.
//!
//! Slow (minutes): it runs the whole seed scenario through the real operator and agent; the
//! second test runs it once more on a sandbox that holds leftovers.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::{run_kubectl, workspace_root};

/// One demo at a time: two at once share the two cores and their waits run out.
static ONE_DEMO: Mutex<()> = Mutex::new(());

#[test]
fn cargo_xtask_demo_once_passes() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(env!("CARGO"))
        .args(["xtask", "demo", "--once"])
        .current_dir(workspace_root())
        .output()
        .expect("cannot run cargo xtask demo --once");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask demo --once failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for shown in [
        "WAL archived: ",
        "backup-example: completed",
        "Phase:        completed",
        "scheduled Backup backup-every-minute-",
        "SELECT count(*) FROM demo → 1000",
        "the 1000 rows written before backup-example are in the restored Cluster",
        "demo: torn down",
    ] {
        assert!(
            stdout.contains(shown),
            "the demo did not show {shown:?}:\n{stdout}"
        );
    }
}

/// The demo on the sandbox (no `--once`) starts clean although the sandbox holds objects an
/// earlier run or another tool left behind: it names them, clears the sandbox and passes.
/// Its own sandbox: `$PGWARDEN_STATE_DIR` (free ports), so a developer's is left alone.
#[test]
fn demo_on_a_sandbox_with_leftovers_says_what_was_there_and_starts_clean() {
    let _one = ONE_DEMO.lock().unwrap_or_else(|e| e.into_inner());
    let sandbox = Sandbox::new();
    let up = sandbox.xtask(&["sandbox", "up"]);
    let access = |key: &str| {
        let line = up.lines().find_map(|l| l.strip_prefix(key));
        PathBuf::from(line.unwrap_or_else(|| panic!("`sandbox up` did not print {key}:\n{up}")))
    };
    let (kubeconfig, kubectl) = (access("KUBECONFIG="), access("kubectl: "));
    let apply = |yaml: &str| run_kubectl(&kubectl, &kubeconfig, &["apply", "-f", "-"], Some(yaml));
    let crds = workspace_root().join("crds/yaml").display().to_string();
    let crds = run_kubectl(&kubectl, &kubeconfig, &["apply", "-f", &crds], None);
    assert!(crds.success, "cannot install the CRDs: {}", crds.stderr);
    let established = ["wait", "--for=condition=established", "crd", "--all"];
    run_kubectl(&kubectl, &kubeconfig, &established, None);
    // The pod's ServiceAccount appears a moment after the control plane.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = apply(LEFTOVERS);
        if out.success {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "cannot apply the leftovers: {}",
            out.stderr
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    let shown = sandbox.demo_until_serving();
    for leftover in [
        "demo: the sandbox already holds",
        "namespace leftover",
        "cluster leftover/other",
        "cluster default/postgresql-bkp",
        "pod default/postgresql-bkp-1",
        "backup-example: completed",
        "the 1000 rows written before backup-example are in the restored Cluster",
        "The sandbox is running",
    ] {
        assert!(
            shown.contains(leftover),
            "the demo did not show {leftover:?}:\n{shown}"
        );
    }
    println!("{shown}");

    // What the demo left behind goes with `sandbox reset`.
    let reset = sandbox.xtask(&["sandbox", "reset"]);
    assert!(reset.contains("sandbox reset: "), "{reset}");
    assert!(!sandbox.dir.join("sandbox/etcd").exists(), "{reset}");
    let status = sandbox.xtask(&["sandbox", "status"]);
    assert!(status.contains("sandbox down"), "{status}");
}

/// A Cluster in a namespace of its own, the seed's Cluster pointing at a store that is not
/// there, and a pod of the seed's name that no controller owns (nothing would ever delete it).
const LEFTOVERS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: leftover}
---
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata: {name: other, namespace: leftover}
spec:
  backup:
    destinationPath: "s3://elsewhere/other"
    endpointURL: "http://127.0.0.1:9"
    s3Credentials:
      accessKeyId: {name: aws-creds, key: ACCESS_KEY_ID}
      secretAccessKey: {name: aws-creds, key: ACCESS_SECRET_KEY}
---
apiVersion: postgresql.k8s.2ndq.io/v1alpha1
kind: Cluster
metadata: {name: postgresql-bkp, namespace: default}
spec:
  backup:
    destinationPath: "s3://elsewhere/postgresql-bkp"
    endpointURL: "http://127.0.0.1:9"
    s3Credentials:
      accessKeyId: {name: aws-creds, key: ACCESS_KEY_ID}
      secretAccessKey: {name: aws-creds, key: ACCESS_SECRET_KEY}
---
apiVersion: v1
kind: Pod
metadata: {name: postgresql-bkp-1, namespace: default}
spec:
  containers: [{name: postgres, image: leftover.invalid/postgres}]
"#;

/// A sandbox in a folder of its own; reset and removed when dropped.
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = std::env::temp_dir().join(format!("pgwarden-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the sandbox folder");
        Sandbox { dir }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.arg("xtask")
            .args(args)
            .env("PGWARDEN_STATE_DIR", &self.dir)
            .current_dir(workspace_root());
        cmd
    }

    /// `cargo xtask <args>`, which must succeed; its standard output.
    fn xtask(&self, args: &[&str]) -> String {
        let out = self.command(args).output().expect("cannot run cargo xtask");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "cargo xtask {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// `cargo xtask demo` until it serves the sandbox (or stops), then stopped as Ctrl-C
    /// would: its process group; returns what it printed.
    fn demo_until_serving(&self) -> String {
        let errors = self.dir.join("demo.stderr");
        let mut child = self
            .command(&["demo"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&errors).expect("cannot create demo.stderr"))
            .process_group(0)
            .spawn()
            .expect("cannot run cargo xtask demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20 * 60);
        let mut shown = String::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            shown.push_str(&line);
            shown.push('\n');
            if line.starts_with("The sandbox is running") {
                break;
            }
        }
        let _ = Command::new("kill")
            .args(["-INT", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        if !shown.contains("The sandbox is running") {
            let errors = std::fs::read_to_string(&errors).unwrap_or_default();
            panic!("the demo did not reach its serving state:\n{shown}\n{errors}");
        }
        shown
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.command(&["sandbox", "reset"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
