//! The Node object (registration, heartbeat) and the loop that syncs the pods bound to it.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------
// The Node object.

pub(super) async fn register(client: &kube::Client, name: &str, kubelet_port: u16) -> Result<()> {
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
    heartbeat(client, name, kubelet_port).await
}

/// The Node's status: Ready, and where the API server finds its kubelet API (only the
/// InternalIP address: the API server tries a Hostname address first, which resolves to
/// nothing here).
pub(super) async fn heartbeat(client: &kube::Client, name: &str, kubelet_port: u16) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = now();
    let capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "capacity": capacity, "allocatable": capacity,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
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

pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------------------
// The loop.

pub(super) struct NodeLoop {
    pub(super) client: kube::Client,
    /// The port of the node's kubelet API (see `kubelet`).
    pub(super) kubelet_port: u16,
    pub(super) opts: Options,
    pub(super) pods: Pods,
    pub(super) next_ip: u32,
    pub(super) last_heartbeat: Instant,
}

impl NodeLoop {
    pub(super) async fn tick(&mut self) -> Result<()> {
        if self.last_heartbeat.elapsed() >= HEARTBEAT {
            self.last_heartbeat = Instant::now();
            heartbeat(&self.client, &self.opts.name, self.kubelet_port).await?;
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

    pub(super) async fn sync_pod(&mut self, pod: Pod) -> Result<()> {
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
    pub(super) async fn finalize(&mut self, pod: &Pod, uid: &str) -> Result<()> {
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

    pub(super) fn allocate_ip(&mut self) -> String {
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
    pub(super) async fn provision_claims(&self) -> Result<()> {
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

pub(super) struct Ctx<'a> {
    pub(super) client: &'a kube::Client,
    pub(super) opts: &'a Options,
}

/// The pods this node runs, by uid; stops every process when dropped (also on panic).
#[derive(Default)]
pub(super) struct Pods(pub(super) HashMap<String, PodRuntime>);

impl Pods {
    pub(super) fn forget_missing(&mut self, seen: &[String]) {
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

    pub(super) fn stop_all(&mut self) {
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
