//! An isolated primary fences itself (issue 13, item 5: no moment with two writable
//! primaries), through the local node: the real operator, agent, PostgreSQL 15 and MinIO.
//!
//! `instances: 1`; the agent reaches the API server through a TCP proxy the test stalls
//! (every byte held, connections open: a partition, or a hung API server). Its reports stop
//! going through; the operator would count it unhealthy after 25 s and a policy may promote
//! a standby after its delay. Sampled each second with a write on the pod's socket (a client
//! connected to it directly):
//! - within 45 s of the stall the write is refused (read-only: the agent fenced PostgreSQL
//!   after 20 s without a report; its last report may be 10 s older than the stall);
//! - once the proxy lets bytes through again, writes succeed again within 60 s (a report went
//!   through and the Cluster still names it the primary).
//!
//! From the host's binaries the agent uses the operator's kubeconfig through the proxy (the
//! node's env), not its ServiceAccount's: what is tested is the silence, not the rights. From
//! the instance image (the default) it uses its in-cluster configuration, whose service
//! address the node's env points at the proxy. Before that (the first suite run in runc mode)
//! the agent went around the proxy and the test failed: writable 45 s into the stall.
//!
//! Before the fix: writes still succeeded 45 s into the stall (kube's client waited almost
//! five minutes on a request, and nothing fenced a primary that could not report).
//!
//! Slow (a minute or two). Needs `cargo xtask setup` (see `cargo xtask test`).

use std::process::Command;
use std::time::{Duration, Instant};

use pgwarden_tests::controlplane::with_crds;
use pgwarden_tests::datapath::{S3Server, deps, wait_for};
use pgwarden_tests::operator::{Operator, apply_when_admitted, apply_yaml, get, store_secret_yaml};
use pgwarden_tests::stallproxy::{StallProxy, server_of};
use pgwarden_tests::world::{StoreWorld, instance_pods_from_images, node_for, store_cluster_yaml};

const BUCKET: &str = "pgwarden-isolated";

/// A write from a client connected to the pod directly: `Ok` committed, `Err` PostgreSQL's
/// refusal (or why psql could not ask).
fn write(w: &StoreWorld<'_>, n: u64) -> Result<(), String> {
    let pod = get(&w.ns, "pod", "pg-1").ok_or("no pod pg-1")?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let socket = w.state.join("node/pods").join(uid).join("run");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(deps().pg_bin.join("psql"))
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&socket)
        .args(["-U", "postgres", "-d", "postgres", "-c"])
        .arg(format!("INSERT INTO marker VALUES ({n})"))
        .output()
        .map_err(|e| e.to_string())?;
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}

fn read_only(w: &StoreWorld<'_>) -> Option<String> {
    w.pod_psql("pg-1", "SHOW default_transaction_read_only")
}

#[test]
fn a_primary_that_cannot_report_fences_itself_and_writes_again_once_it_reports() {
    // 250-254: no other test of the workspace uses these subnets.
    let subnet = 250 + (std::process::id() % 5) as u8;
    let cp = with_crds();
    let ns = cp.namespace("isolated");
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let upstream = server_of(&cp.operator_kubeconfig()).expect("the API server's address");
    let proxy = StallProxy::start(&upstream).expect("proxy");
    let via = proxy
        .kubeconfig(&cp.operator_kubeconfig())
        .expect("kubeconfig");
    let via = via.display().to_string();
    let (host, port) = proxy.addr.rsplit_once(':').expect("the proxy's host:port");
    // From the instance image the agent uses in-cluster configuration (the service env a
    // kubelet sets, its ServiceAccount's token): that is pointed at the proxy. From the host's
    // binaries it reads KUBECONFIG. Either way every request of the agent crosses the proxy.
    let env = if instance_pods_from_images() {
        vec![
            ("KUBERNETES_SERVICE_HOST", host),
            ("KUBERNETES_SERVICE_PORT", port),
        ]
    } else {
        vec![("KUBECONFIG", via.as_str())]
    };
    let node = node_for(cp, &ns, "iso", subnet, &s3.credentials.region, &env);
    apply_when_admitted(&ns, &store_secret_yaml(&s3.credentials));
    let op = Operator::start(cp, &ns.name);
    let state = node.state.clone();
    let w = StoreWorld {
        ns,
        s3,
        op,
        node,
        state,
    };
    apply_yaml(&w.ns, &store_cluster_yaml(&w, BUCKET, "pg", 1, ""));
    let ready = w.ready_pod("pg-1", Duration::from_secs(300));
    assert!(
        ready.is_some(),
        "pg-1 not ready:\n{}",
        w.pod_log_tail("pg-1", 60)
    );
    w.pod_psql("pg-1", "CREATE TABLE marker (id bigint PRIMARY KEY)")
        .expect("CREATE TABLE");
    write(&w, 0).expect("a write before the stall");

    proxy.stall();
    let stalled = Instant::now();
    let mut n = 0;
    let fenced = wait_for(Duration::from_secs(45), Duration::from_secs(1), || {
        n += 1;
        write(&w, n).err().map(|e| (stalled.elapsed(), e))
    });
    // Looked at before the API server answers again: a request held by the proxy goes
    // through the moment it resumes, and the fence is lifted at once.
    let fenced_read_only = read_only(&w);
    let log = w.pod_log_tail("pg-1", 200);
    proxy.resume();
    let (fenced, refusal) = fenced.unwrap_or_else(|| {
        panic!(
            "pg-1 still took writes {:?} into the stall ({n} writes):\n{log}",
            stalled.elapsed()
        )
    });
    assert!(
        refusal.contains("read-only transaction"),
        "refused as read-only: {refusal}"
    );
    assert_eq!(fenced_read_only.as_deref(), Some("on"), "fenced read-only");
    assert!(
        log.contains("fenced read-only: no report reached the API server"),
        "the agent says why:\n{log}"
    );

    let resumed = Instant::now();
    let writable = wait_for(Duration::from_secs(60), Duration::from_secs(1), || {
        n += 1;
        write(&w, n).ok().map(|()| resumed.elapsed())
    });
    let writable = writable.unwrap_or_else(|| {
        panic!(
            "pg-1 still refuses writes {:?} after the API server came back:\n{}",
            resumed.elapsed(),
            w.pod_log_tail("pg-1", 30)
        )
    });
    eprintln!(
        "pg-1 fenced {fenced:?} into the stall; writable again {writable:?} after it ended (shared machine)"
    );
    assert_eq!(read_only(&w).as_deref(), Some("off"), "unfenced");
}
